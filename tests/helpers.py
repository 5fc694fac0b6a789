"""Shared test helpers: live random networks and ANN-side QCFS levels, the oracles (exact
spiking network, streamed histograms) and faults injected through the data."""
import logging
import os

import numpy as np
import torch
from torch import nn

import models


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def randomize_(model, generator):
    """Random weights, biases and BN statistics (eval-mode BN is then a random affine map).

    Convolutions of any kind (grouped and depthwise included: the fan-in is that of one
    output, ``weight[0]``) and linear layers get He-scaled weights; every BatchNorm gets
    random statistics and affine parameters.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _CONV + (nn.Linear,)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2.0 / fan_in) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1, generator=generator)
            elif isinstance(module, _BATCHNORM):
                if module.affine:
                    module.weight.uniform_(0.5, 1.5, generator=generator)
                    module.bias.normal_(0, 0.2, generator=generator)
                if module.running_mean is not None:
                    module.running_mean.normal_(0, 0.2, generator=generator)
                    module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


@torch.no_grad()
def calibrate_thresholds_(model, x, percentile=0.95):
    """Set each QCFS threshold, in forward order, to a high percentile of its own input.

    Done in one pass with pre-hooks, so each layer sees inputs produced with the already
    calibrated thresholds of the layers before it. Keeps random networks alive: without it
    random thresholds leave whole layers silent or saturated, and equivalence would be
    tested on constant tensors.
    """
    def hook(module, args):
        values = args[0].detach().flatten().float()
        if values.numel() > 1_000_000:  # a fixed subsample: the same thresholds every run
            subsample = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))
            values = values[subsample[:1_000_000]]
        positive = values[values > 0]
        source = positive if positive.numel() else values.abs()
        module.threshold.fill_(max(float(torch.quantile(source, percentile)), 1e-3))

    handles = [m.register_forward_pre_hook(hook) for _, m in models.qcfs_layers(model)]
    try:
        logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    # Random deep networks map every input to nearly the same logits; removing the batch mean
    # from the output bias lets the per-image differences decide the class (networks that
    # end in a spiking layer and a pool, as squeezenet, have no output bias to shift).
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not torch.is_tensor(logits):  # several outputs: nothing to centre
        return model
    if linear and linear[-1].bias is not None and linear[-1].out_features == logits.shape[1]:
        linear[-1].bias -= logits.mean(0)
    return model


@torch.no_grad()
def ann_levels(model, x):
    """``(logits, {qcfs name: integer level tensor (B, ...)})`` from the ANN in eval mode."""
    levels = {}
    handles = []
    for name, module in models.qcfs_layers(model):
        def hook(mod, args, output, name=name):
            levels[name] = mod.quantize(args[0])
        handles.append(module.register_forward_hook(hook))
    try:
        logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return logits, levels


def live_model(arch, levels, variant="cifar", num_classes=10, seed=0, images=4, size=None,
               dtype=torch.float64):
    """A random, calibrated (alive) model and its input batch."""
    generator = torch.Generator().manual_seed(seed)
    model = models.create_model(arch, num_classes=num_classes, levels=levels, variant=variant)
    model = randomize_(model, generator).to(dtype)
    size = size or (32 if variant == "cifar" else 64)
    x = torch.randn(images, 3, size, size, generator=generator, dtype=dtype)
    calibrate_thresholds_(model, x)
    return model, x


def few_long_levels(count, seed):
    """Mixed levels from {1, 2, 3, 4, 8}, adjacent layers differing, at most two 8s: the step
    simulator costs about the sum of the input train lengths times the ANN, so few long trains
    keep large networks' float64 simulations fast."""
    generator = torch.Generator().manual_seed(seed)
    levels = []
    while len(levels) < count:
        value = [1, 2, 3, 4, 8][int(torch.randint(5, (1,), generator=generator))]
        if (not levels or value != levels[-1]) and not (value == 8 and levels.count(8) >= 2):
            levels.append(value)
    return levels


def assert_one_line_error(capsys, *fragments):
    """The captured stderr is exactly one line, no traceback, containing every fragment."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def multi_segment_snn(model, x, **kwargs):
    """``convert_to_snn(model)`` with the smallest step budget whose chunk plan for ``x`` has
    several segments, the first one chunked (so chunks are joined between segments)."""
    for budget in range(1, 8 * x.shape[0] + 1):
        snn = models.convert_to_snn(model, step_budget=budget, **kwargs)
        sizes = [size for _, size in snn.chunk_plan(x)]
        if len(sizes) > 1 and sizes[0] < x.shape[0]:
            return snn
    raise AssertionError("no step budget gives a multi-segment chunk plan")


def make_live(model, input_shape, images=3, seed=0, dtype=torch.float64):
    """``(model, x)``: ``model`` with random weights and BatchNorm statistics, in ``dtype``,
    its QCFS thresholds calibrated on a random batch ``x`` of ``images`` inputs of per-image
    shape ``input_shape`` (so every layer is alive), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    model = randomize_(model, generator).to(dtype)
    x = torch.randn(images, *input_shape, generator=generator, dtype=dtype)
    calibrate_thresholds_(model, x)
    return model, x


def assert_snn_exact(model, x, sims=("step", "counts"), min_classes=2, alive=True,
                     report=True):
    """The oracle: alive network, exact counts, logits close, and (with ``report``) the cost
    report, T_eff and the latencies computed, the report's spikes equal to the ANN's levels.

    Alive (with ``alive``): every QCFS layer has 5-95 % non-zero outputs on ``x`` and the
    batch's logits predict at least ``min_classes`` classes (with ``min_classes=1``: the
    logits differ between images). Then, on every simulation path in ``sims``, every spiking
    neuron's emitted count equals the ANN's QCFS level, and the logits agree with the ANN's
    to rtol 1e-9 + atol 1e-9 * max |ANN logit| (float64: the SNN sums per-step currents where
    the ANN applies each layer once, ~1e-15 relative rounding, far inside 1e-9).

    Returns ``{"ann": ANN logits, sim: (SNN logits, [LayerStats]) for each sim}``, the
    statistics with per-neuron counts, for further checks.
    """
    logits, levels = ann_levels(model, x)
    if alive:
        for name, level in levels.items():
            active = float((level > 0).double().mean())
            assert 0.05 <= active <= 0.95, f"layer {name} is {active:.1%} active: not alive"
        first = logits  # several outputs: the first decides
        if not torch.is_tensor(first):
            first = next(iter(first.values())) if isinstance(first, dict) else first[0]
        if min_classes > 1:
            predicted = len(set(first.flatten(1).argmax(1).tolist()))
            assert predicted >= min_classes, f"the network predicts {predicted} class(es)"
        else:
            assert not all(torch.allclose(first[0], row) for row in first[1:]), \
                "the outputs ignore the image"
    runs, snns = {"ann": logits}, {}
    for sim in sims:
        snns[sim] = models.convert_to_snn(model, sim=sim)
        runs[sim] = assert_counts_and_logits(snns[sim], x, logits, levels, label=sim)
    if report:
        counts_snn = snns.get("counts") or models.convert_to_snn(model, sim="counts")
        assert_cost_report_counts(model, counts_snn, x, levels,
                                  runs["counts"][1] if "counts" in runs else None)
    return runs


def assert_logits_close(actual, expected):
    """Two float64 computations of the same logits agree to rtol 1e-9 + atol 1e-9 * max
    |expected|: the SNN sums per-step currents (or window sums, or chunks of the batch) where
    the ANN applies each layer once, a different order of the same additions, ~1e-15 relative
    rounding, far inside 1e-9."""
    if not torch.is_tensor(expected):  # several outputs (a dict, tuple or list): each
        assert type(actual) is type(expected)
        if isinstance(expected, dict):
            assert list(actual) == list(expected)
            actual, expected = list(actual.values()), list(expected.values())
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_logits_close(a, e)
        return
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9 * scale)


def assert_counts_and_logits(snn, x, logits, levels, label=""):
    """``snn`` on ``x``: its spiking layers are exactly those of ``levels`` (``{name: integer
    tensor (B, ...)}``), in that order, every neuron's emitted count (int32) equals its entry
    there, and its logits are close to ``logits`` (:func:`assert_logits_close`). Returns
    ``(logits, [LayerStats])``, the statistics with per-neuron counts."""
    out, stats = snn.forward_with_stats(x, keep_counts=True)
    assert [s.name for s in stats] == list(levels), label
    for s in stats:
        assert s.counts.dtype == torch.int32, (label, s.name)
        mismatched = int((s.counts.to(torch.int64) != levels[s.name]).sum())
        assert mismatched == 0, f"{label} {s.name}: {mismatched} of {s.counts.numel()} differ"
    assert_logits_close(out, logits)
    return out, stats


def assert_cost_report_counts(model, snn, x, levels, stats=None):
    """The cost report of ``snn`` on ``x`` runs (with T_eff and both latencies of ``model``)
    and counts, per spiking layer, the spikes the ANN's levels say. ``stats``: those of
    ``snn.forward_with_stats(x)`` if already computed."""
    import snn_cost
    from cost_meter import CostMeter
    from models.timing import latency_steps, layer_fan_ins, pipelined_latency_steps, teff
    layer_levels = models.get_levels(model)
    timing = {"T_eff": teff(layer_levels, layer_fan_ins(model))[0],
              "latency_steps": latency_steps(model)[0],
              "latency_pipelined_steps": pipelined_latency_steps(model),
              "T_eff_reference": None, "mean_level": sum(layer_levels) / len(layer_levels)}
    if stats is None:
        _, stats = snn.forward_with_stats(x, keep_counts=True)
    meter = CostMeter(snn)
    meter.add(x, stats)
    report = snn_cost.build_report(meter, timing)
    spikes = {row["layer"]: row["spikes_per_image"] for row in report["rows"]
              if row["kind"] == "spiking"}
    assert spikes == {name: int(level.sum()) / x.shape[0] for name, level in levels.items()}
    assert_events_cover_zero_skip(report)


def assert_events_cover_zero_skip(report):
    """An exact conversion's spiking network never does fewer synaptic events than a
    zero-skipping quantized ANN does MACs: every neuron fires q times, its level, so a source
    reaching n outputs costs q x n events against n MACs when q > 0 (an average pool between
    them only merges inputs, whose events add up). Per row, for shortcut additions too, and in
    total; and the zero-skipping ANN never does more than the dense one. Counts are exact
    integers divided by the number of images, or their split among the sources of a pool
    that mixes several: the dense and zero-skipping counts are then compared in total only,
    and a relative slack of 1e-12 covers the split's float rounding (one count is 1e-9 of a
    total below 1e9)."""
    rows = report["rows"]
    for key in ("macs", "additions"):
        assert sum(r[f"zero_skip_{key}_per_image"] for r in rows) <= \
            sum(r[f"ann_{key}_per_image"] for r in rows) * (1 + 1e-12), key
    for row in rows:
        label = f"{row['layer']} ({row['kind']})"
        if row["kind"] in ("spiking", "maxpool"):
            assert row["accumulates_per_image"] >= \
                row["zero_skip_macs_per_image"] * (1 - 1e-12), label
            assert row["shortcut_additions_per_image"] >= \
                row["zero_skip_additions_per_image"], label
            assert row["active_input_elements_per_image"] <= \
                row["input_elements_per_image"], label
        else:  # the analog layer and dense-fed layers: the same MACs on both sides per step
            assert row["zero_skip_macs_per_image"] == row["ann_macs_per_image"], label
            assert row["macs_per_image"] >= row["ann_macs_per_image"], label
    events = sum(r["accumulates_per_image"] + r["macs_per_image"] for r in rows)
    assert events >= sum(r["zero_skip_macs_per_image"] for r in rows) * (1 - 1e-12)


def assert_streamed_histograms(model, batches, bins=(4, 5, 7)):
    """The streamed-histogram oracle: for every QCFS layer of ``model``, the per-level counts
    :func:`al_metric.collect_level_counts` streams over ``batches`` (input tensors) count
    every output the layer produced on them, and :func:`al_metric.level_histogram` of those
    counts equals ``numpy.histogram`` of the materialized outputs, exactly (the same values
    and the same edges), for each number of ``bins``."""
    from al_metric import collect_level_counts, level_histogram
    batches = list(batches)
    layers = models.qcfs_layers(model)
    counts = collect_level_counts(model, [(x, None) for x in batches], torch.device("cpu"))
    assert list(counts) == [name for name, _ in layers]
    outputs = {name: [] for name, _ in layers}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: outputs[n].append(out))
               for n, m in layers]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    for name, module in layers:
        values = torch.cat([o.flatten() for o in outputs[name]]).numpy()
        assert counts[name].sum() == values.size, name
        for count in bins:
            expected, _ = np.histogram(values, count)
            streamed = level_histogram(counts[name], module.threshold, module.level, count)
            np.testing.assert_array_equal(streamed, expected, err_msg=f"{name}, {count} bins")


class FaultAt(torch.utils.data.Dataset):
    """``dataset``, with a fault when the ``count``-th sample is read (counting every read,
    in this process: load with ``workers=0``): ``signals`` sent to this process, one after
    the other (each is handled before the next is sent), and, with ``nonfinite``, that
    sample's image filled with NaN."""

    def __init__(self, dataset, count, signals=(), nonfinite=False):
        self.dataset, self.count, self.signals = dataset, count, signals
        self.nonfinite, self.reads = nonfinite, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads += 1
        image, target = self.dataset[index]
        if self.reads == self.count:
            for signum in self.signals:
                os.kill(os.getpid(), signum)
            if self.nonfinite:
                image = torch.full_like(image, float("nan"))
        return image, target


def recording_logger(name):
    """``(logger, messages)``: a logger of its own whose messages are appended to the list."""
    messages = []

    class Record(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger(f"tests.{name}")
    logger.handlers[:] = [Record()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, messages


class UNet(nn.Module):
    """A two-level U-Net: double convolutions, max pooling down, transposed convolutions up,
    skip concatenations, a 1x1 head."""

    def __init__(self, classes=3, width=4):
        super().__init__()

        def double(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                                 nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
                                 nn.BatchNorm2d(c_out), nn.ReLU())

        w = width
        self.enc1, self.enc2, self.mid = double(3, w), double(w, 2 * w), double(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = double(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = double(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)
