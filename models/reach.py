"""How many outputs one spike reaches: the geometry behind the operation counts.

:func:`spike_reach` gives, for every position of a spike map, the operations one spike there
causes in the weighted layer it feeds (average pools and a flatten between them folded in);
:func:`dense_macs` the MACs of a layer on one dense input. Used by :class:`cost_meter.CostMeter`
(the counting rules are in :mod:`snn_cost`).
"""
import copy

import torch
from torch import nn

__all__ = ["spike_reach", "dense_macs", "connections"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d) + _TRANSPOSED
_WEIGHTED = _CONV + (nn.Linear,)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveAvgPool3d)
_REACH_BATCH = 4096  # one-hot probes per chunk when measuring a reach


def spike_reach(layer, chain, source_shape):
    """Operations one spike at each position of a spiking layer's output causes in ``layer``.

    Args:
        layer: the weighted layer (``nn.Conv1d/2d/3d`` or ``nn.Linear``) the spikes reach, or
            None to count the elements the spike reaches through ``chain`` alone (an identity
            shortcut: one addition each).
        chain: the modules between the spiking layer and ``layer``, in order: average pools
            (any kind) and at most one final ``nn.Flatten``.
        source_shape: per-image shape of the spike map, ``(C, *spatial)`` or ``(features,)``.

    Returns:
        int64 tensor of shape ``source_shape``: for a conv, ``out_channels / groups`` times the
        number of output positions whose (pool-folded) receptive field contains the position;
        for a linear layer, ``out_features`` (0 where a pool drops the position).

    Every layer here connects each spatial dimension independently (box kernels, per-dimension
    stride and padding), so the reach is the product of one-dimensional reaches; each is
    measured by running the real pools and an all-ones copy of the conv on one-hot
    hyperplanes, which keeps stride, padding, dilation, ceil_mode and adaptive windows exact.
    All weights of those probes are positive, so "reached" is simply "output > 0".
    """
    source_shape = tuple(int(s) for s in source_shape)
    pools, flattened = _split_chain(chain)
    if layer is None:
        fan_out, count_outputs = 1, True
    elif isinstance(layer, nn.Linear):
        # A Linear layer acts on the last dimension: every element it sees reaches its
        # out_features outputs, whatever the leading dimensions (a 3-D value included).
        fan_out, count_outputs = layer.out_features, False
    elif isinstance(layer, _CONV):
        if flattened:
            raise ValueError("a Flatten before a convolution is not supported")
        fan_out, count_outputs = layer.out_channels // layer.groups, True
    else:
        raise TypeError(f"cannot count operations of {type(layer).__name__}")
    spatial = source_shape[1:]
    if not spatial:
        if pools:
            raise ValueError(f"pooling a flat spike vector of shape {source_shape}")
        return torch.full(source_shape, fan_out, dtype=torch.int64)
    probe = _surrogate(layer, len(spatial)) if isinstance(layer, _CONV) else None
    reach = torch.full((), fan_out, dtype=torch.int64)
    for dim, size in enumerate(spatial):
        per_index = _reach_along(dim, spatial, pools, probe)  # (size,) outputs reached along dim
        if not count_outputs:
            per_index = (per_index > 0).to(torch.int64)
        view = [1] * len(spatial)
        view[dim] = size
        reach = reach * per_index.view(view)
    return reach.unsqueeze(0).expand(source_shape).contiguous()


def dense_macs(layer, input_shape):
    """MACs of ``layer`` on one dense input of per-image shape ``input_shape`` (no padding taps)."""
    return int(spike_reach(layer, (), input_shape).sum())


@torch.no_grad()
def connections(layer, input_shape, nonzero_only=True):
    """Per element of one input of per-image shape ``input_shape``: the weights of ``layer``
    it is multiplied by (int64, shaped ``input_shape``), only the nonzero ones by default.

    Summed against a binary input, this is NeuroBench's synaptic-operation count, which
    re-runs the layer with every nonzero weight and input set to 1 (no bias); with
    ``nonzero_only=False``, against an all-ones input, its dense count. A linear layer's are
    its weight columns' (nonzero) counts; a convolution's (padding modes, transposed,
    grouped) the gradient of the sum of its output, with binarized weights, with respect to
    an all-ones input: a kernel tap that reads a reflected or circular copy of an element
    counts for that element, so an element can reach one output through several taps.
    """
    input_shape = tuple(int(s) for s in input_shape)
    weight = layer.weight.detach()
    binary_weight = (weight != 0) if nonzero_only else torch.ones_like(weight, dtype=torch.bool)
    if isinstance(layer, nn.Linear):
        per_feature = binary_weight.sum(0).to(torch.int64)
        return per_feature.expand(input_shape).contiguous()
    if not isinstance(layer, _CONV):
        raise TypeError(f"cannot count operations of {type(layer).__name__}")
    binary = copy.deepcopy(layer).to(torch.float64)
    binary.weight.copy_(binary_weight)
    binary.bias = None
    binary.requires_grad_(False)
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=weight.device,
                   requires_grad=True)
    with torch.enable_grad():
        binary(x).sum().backward()
    return x.grad[0].round().to(torch.int64).cpu()


def _split_chain(chain):
    pools, flattened = [], False
    for module in chain:
        if isinstance(module, nn.Flatten):
            flattened = True
        elif isinstance(module, _POOLS) and not flattened:
            pools.append(module)
        else:
            raise TypeError(f"cannot fold {type(module).__name__} between a spiking layer and "
                            "the layer it feeds (only average pools, then Flatten)")
    return pools, flattened


def _surrogate(conv, num_spatial):
    """A one-channel copy of ``conv`` with all-ones weights and no bias."""
    if conv.weight.dim() - 2 != num_spatial:
        raise ValueError(f"{type(conv).__name__} fed by a map with {num_spatial} spatial dims")
    options = {"output_padding": conv.output_padding} if isinstance(conv, _TRANSPOSED) else {}
    probe = type(conv)(1, 1, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode,
                       **options)
    probe = probe.to(torch.float64)
    with torch.no_grad():
        probe.weight.fill_(1.0)
    return probe


@torch.no_grad()
def _reach_along(dim, spatial, pools, probe):
    """For each index i along ``dim``: output indices along ``dim`` reached from the hyperplane
    ``x[dim] == i`` (ones on every other dimension)."""
    size = spatial[dim]
    counts = []
    for start in range(0, size, _REACH_BATCH):
        index = torch.arange(start, min(size, start + _REACH_BATCH))
        x = torch.zeros((len(index), 1, *spatial), dtype=torch.float64)
        x.movedim(dim + 2, 1)[torch.arange(len(index)), index] = 1.0
        for pool in pools:
            x = pool(x)
        if probe is not None:
            x = probe(x)
        hit = x[:, 0] > 0  # (n, *out_spatial)
        if len(spatial) > 1:  # reached along dim from anywhere on the other dims
            hit = hit.movedim(dim + 1, 1).flatten(2).any(2)  # (n, out_size along dim)
        counts.append(hit.sum(1).to(torch.int64))
    return torch.cat(counts)
