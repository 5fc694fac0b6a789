"""One focused exactness test per operation the converter takes besides the classic CNN ones:
transposed convolutions, F.conv2d/F.linear with parameter weights, conv padding modes,
copies (nearest upsampling, padding, pixel (un)shuffle: a burst stays a burst, so a max pool
after them is exact), resampling (bilinear and friends: a general train, so a max pool after
it is refused), torch.stack of trains of different lengths, sums over non-batch dims, dict /
tuple / list outputs and ReLUs spelled as clamps. Each model is a small ReLU network made a
QCFS network by models.qcfsify, live in float64 (helpers.make_live), checked with
helpers.assert_snn_exact: both simulation paths, every spike count equal to its ANN level, the
outputs close to the ANN's and the cost report computed."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from errors import ModelError
from helpers import assert_logits_close, assert_snn_exact, make_live
from models import QCFS, UnsupportedModelError, qcfsify
from models.timing import layer_fan_ins, layer_num_steps_in

BN_UNFOLDED = "scale every step, shift once per window"
BURST_MAXPOOL = "max of front-loaded bursts, every step"


@pytest.fixture(autouse=True)
def _seeded():
    """Modules that helpers.randomize_ leaves alone (transposed convolutions) keep their
    default initialisation, drawn from the global generator: the same every run."""
    torch.manual_seed(0)


class Net(nn.Module):
    """A model whose forward is ``body(self, x)``, holding the given modules and parameters."""

    def __init__(self, body, **parts):
        super().__init__()
        self.body = body
        for name, part in parts.items():
            setattr(self, name, part)

    def forward(self, x):
        return self.body(self, x)


def param(*shape, scale=None, seed=0):
    """An ``nn.Parameter`` of random values, He-scaled over all but dim 0 unless ``scale``."""
    scale = scale if scale is not None else (2.0 / max(1, math.prod(shape[1:]))) ** 0.5
    generator = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.randn(*shape, generator=generator) * scale)


def exact(model, input_shape, levels, images=3):
    """``model`` made a live QCFS network with ``levels``, checked exact on both paths;
    returns ``(ann, x, runs)`` (runs: :func:`helpers.assert_snn_exact`'s)."""
    ann, x = make_live(qcfsify(model, levels), input_shape, images=images)
    return ann, x, assert_snn_exact(ann, x, min_classes=1)


def fates(ann):
    """``{node name: fate}`` of the converted network."""
    return {name: fate for name, _, fate in models.convert_to_snn(ann).fates()}


def refusal(build, *args, **kwargs):
    """The one-line message of the ValueError ``build(*args, **kwargs)`` raises."""
    with pytest.raises(ValueError) as error:
        build(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --- weighted layers ---------------------------------------------------------------------------

TRANSPOSED = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)


def _transposed_module(self, x):
    h = F.relu(self.conv(x))
    h = F.relu(self.bn(self.up(h)))
    return self.fc(h.mean((2, 3)))


def _transposed_function(self, x):
    h = F.relu(self.conv(x))
    h = F.relu(self.bn(F.conv_transpose2d(h, self.weight, self.bias, **TRANSPOSED)))
    return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("spelling", ["module", "F.conv_transpose2d"])
def test_transposed_conv_with_batchnorm_after_it(spelling):
    """Stride 2, output_padding 1, groups 2, dilation 2; the BatchNorm after it is not folded
    (the output channels are the weight's dim 1): a per-step scale and a per-window shift."""
    parts = dict(conv=nn.Conv2d(3, 4, 3, padding=1), bn=nn.BatchNorm2d(6), fc=nn.Linear(6, 4))
    if spelling == "module":
        model = Net(_transposed_module, up=nn.ConvTranspose2d(4, 6, 3, **TRANSPOSED), **parts)
    else:  # weight (C_in, C_out / groups, k, k)
        model = Net(_transposed_function, weight=param(4, 3, 3, 3, scale=0.5),
                    bias=param(6, scale=0.1, seed=1), **parts)
    ann, x, _ = exact(model, (3, 5, 5), [3, 5])
    assert ann(x).shape == (3, 4)
    graph = models.graph.model_graph(ann)
    assert [n.role for n in graph.nodes if n.op in ("ConvTranspose2d", "F.conv_transpose2d")] \
        == ["weighted"]
    assert fates(ann)["bn"] == BN_UNFOLDED


def _conv_same_groups(self, x):
    h = F.relu(self.conv(x))
    h = F.relu(F.conv2d(h, self.weight, self.bias, padding="same", groups=2))
    return self.fc(h.flatten(1))


def _conv_computed_weight(self, x):
    h = F.relu(self.conv(x))
    h = F.relu(F.conv2d(h, self.weight * 0.5 + 0.01, stride=2, padding=1))
    return self.fc(h.flatten(1))


def _linear_function(self, x):
    h = F.relu(self.conv(x)).mean((2, 3))
    h = F.relu(F.linear(h, self.weight, self.bias))
    return F.linear(h, self.head)


@pytest.mark.parametrize("case", ["F.conv2d padding=same groups=2", "F.conv2d computed weight",
                                  "F.linear"])
def test_weighted_functions_with_parameter_weights(case):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    if case == "F.conv2d padding=same groups=2":  # weight (C_out, C_in / groups, k, k)
        model = Net(_conv_same_groups, conv=conv, weight=param(6, 2, 3, 3),
                    bias=param(6, scale=0.1, seed=1), fc=nn.Linear(6 * 4 * 4, 3))
        shape = (3, 4, 4)
    elif case == "F.conv2d computed weight":  # a weight computed from a parameter
        model = Net(_conv_computed_weight, conv=conv, weight=param(5, 4, 3, 3),
                    fc=nn.Linear(5 * 3 * 3, 3))
        shape = (3, 5, 5)
    else:
        model = Net(_linear_function, conv=conv, weight=param(7, 4),
                    bias=param(7, scale=0.1, seed=1), head=param(3, 7, seed=2))
        shape = (3, 4, 4)
    ann, _, _ = exact(model, shape, [4, 3])
    weighted = [n.op for n in models.graph.model_graph(ann).nodes if n.role == "weighted"]
    assert weighted[1] == ("F.linear" if case == "F.linear" else "F.conv2d"), weighted


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv_padding_modes(mode):
    def body(self, x):
        h = F.relu(self.conv1(x))
        return self.fc(F.relu(self.conv2(h)).flatten(1))

    model = Net(body, conv1=nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode),
                conv2=nn.Conv2d(4, 4, 3, padding=2, padding_mode=mode, stride=2),
                fc=nn.Linear(4 * 4 * 4, 3))
    exact(model, (3, 5, 5), [3, 4])


# --- copies keep bursts; resampling does not ---------------------------------------------------

# (operation on the spiking layer's output, its output channels and size from 4 x 6 x 6)
COPIES = {
    "F.interpolate nearest": (lambda s, h: F.interpolate(h, scale_factor=2), 4, 12),
    "F.interpolate nearest-exact size=":
        (lambda s, h: F.interpolate(h, size=(9, 9), mode="nearest-exact"), 4, 9),
    "nn.Upsample nearest": (lambda s, h: s.op(h), 4, 12),
    "nn.UpsamplingNearest2d": (lambda s, h: s.op(h), 4, 12),
    "F.pad zeros": (lambda s, h: F.pad(h, (1, 1, 2, 0)), 4, 8),
    "F.pad reflect": (lambda s, h: F.pad(h, (1, 1, 1, 1), mode="reflect"), 4, 8),
    "F.pad replicate": (lambda s, h: F.pad(h, (2, 0, 0, 2), "replicate"), 4, 8),
    "F.pad circular": (lambda s, h: F.pad(h, (1, 1, 1, 1), mode="circular"), 4, 8),
    "nn.ZeroPad2d": (lambda s, h: s.op(h), 4, 8),
    "nn.ConstantPad2d value 0": (lambda s, h: s.op(h), 4, 8),
    "nn.ReflectionPad2d": (lambda s, h: s.op(h), 4, 8),
    "nn.ReplicationPad2d": (lambda s, h: s.op(h), 4, 8),
    "F.pixel_shuffle": (lambda s, h: F.pixel_shuffle(h, 2), 1, 12),
    "nn.PixelShuffle": (lambda s, h: s.op(h), 1, 12),
    "F.pixel_unshuffle": (lambda s, h: F.pixel_unshuffle(h, 2), 16, 3),
    "nn.PixelUnshuffle": (lambda s, h: s.op(h), 16, 3),
}
COPY_MODULES = {
    "nn.Upsample nearest": lambda: nn.Upsample(scale_factor=2),
    "nn.UpsamplingNearest2d": lambda: nn.UpsamplingNearest2d(scale_factor=2),
    "nn.ZeroPad2d": lambda: nn.ZeroPad2d(1),
    "nn.ConstantPad2d value 0": lambda: nn.ConstantPad2d((0, 2, 1, 1), 0.0),
    "nn.ReflectionPad2d": lambda: nn.ReflectionPad2d(1),
    "nn.ReplicationPad2d": lambda: nn.ReplicationPad2d((1, 1, 0, 2)),
    "nn.PixelShuffle": lambda: nn.PixelShuffle(2),
    "nn.PixelUnshuffle": lambda: nn.PixelUnshuffle(2),
}


@pytest.mark.parametrize("case", list(COPIES))
def test_copies_keep_bursts_so_a_max_pool_after_them_is_exact(case):
    """A spiking layer's burst copied (upsampled nearest, padded, pixel-(un)shuffled) is a
    burst: a max pool right after the copy is taken and exact."""
    operation, channels, size = COPIES[case]
    pooled = size // 2 if size > 3 else 1

    def body(self, x):
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(self.copy(self, h), 2 if size > 3 else 3)
        h = F.relu(self.conv2(h))
        return self.fc(h.flatten(1))

    parts = {"op": COPY_MODULES[case]()} if case in COPY_MODULES else {}
    model = Net(body, conv1=nn.Conv2d(3, 4, 3, padding=1),
                conv2=nn.Conv2d(channels, 4, 3, padding=1),
                fc=nn.Linear(4 * pooled * pooled, 3), **parts)
    model.copy = operation
    ann, _, _ = exact(model, (3, 6, 6), [3, 2])
    graph = models.graph.model_graph(ann)
    copy, pool = [n for n in graph.nodes if n.role in ("copy", "maxpool")]
    assert (copy.role, copy.kind, pool.kind) == ("copy", "burst", "burst")
    assert fates(ann)[pool.name] == BURST_MAXPOOL


RESAMPLES = {
    "F.interpolate bilinear": lambda s, h: F.interpolate(h, scale_factor=2, mode="bilinear"),
    "F.interpolate bilinear align_corners size=":
        lambda s, h: F.interpolate(h, size=(7, 9), mode="bilinear", align_corners=True),
    "F.interpolate bicubic": lambda s, h: F.interpolate(h, scale_factor=2, mode="bicubic"),
    "F.interpolate area": lambda s, h: F.interpolate(h, size=(3, 3), mode="area"),
    "nn.Upsample bilinear": lambda s, h: s.op(h),
    "nn.UpsamplingBilinear2d": lambda s, h: s.op(h),
}
RESAMPLE_MODULES = {
    "nn.Upsample bilinear": lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
    "nn.UpsamplingBilinear2d": lambda: nn.UpsamplingBilinear2d(scale_factor=2),
}


def _resampling_net(case, then):
    def body(self, x):
        h = F.relu(self.conv1(x))
        h = then(self.resample(self, h))
        return self.fc(h.mean((2, 3)))

    parts = {"op": RESAMPLE_MODULES[case]()} if case in RESAMPLE_MODULES else {}
    model = Net(body, conv1=nn.Conv2d(3, 4, 3, padding=1), fc=nn.Linear(4, 3), **parts)
    model.resample = RESAMPLES[case]
    return model


@pytest.mark.parametrize("case", list(RESAMPLES))
def test_resampling_is_exact(case):
    """Fixed linear interpolation of a spiking layer's output, read by another spiking layer:
    exact (its value is a general train, which the next layer accumulates)."""
    ann, _, _ = exact(_resampling_net(case, F.relu), (3, 6, 6), [5, 3])
    graph = models.graph.model_graph(ann)
    resample = [n for n in graph.nodes if n.role == "resample"]
    assert len(resample) == 1 and resample[0].kind == "train"


@pytest.mark.parametrize("case", list(RESAMPLES))
def test_max_pool_after_resampling_is_refused(case):
    """A resampled burst is no burst: max pooling it has no exact spiking counterpart."""
    model = _resampling_net(case, lambda h: F.max_pool2d(h, 2))
    with pytest.raises(ValueError, match=r"node 'max_pool2d' \(F.max_pool2d\) max-pools the "
                       r"output of '[^']+' \((F.interpolate|Upsampl\w+)\), which is not a "
                       r"spike burst") as error:
        qcfsify(model, 2)
    assert "\n" not in str(error.value)


# --- stacking and sums --------------------------------------------------------------------------

STACKS = {
    "stack dim=1, sum(1)": lambda a, b: torch.stack([a, b], 1).sum(1),
    "stack dim=1, view as cat": lambda a, b: torch.stack((a, b), dim=1).view(-1, 8, 4, 4),
    "stack dim=-1, flatten(-2)": lambda a, b: torch.stack([a, b], dim=-1).flatten(-2),
    "stack dim=2, reshape(size(0), ...)":
        lambda a, b: _reshape_as_cat(torch.stack([a, b], 2)),
}


def _reshape_as_cat(stacked):
    """The batch dimension taken from the stack itself (the longer train's steps x images)."""
    return stacked.reshape(stacked.size(0), 8, 4, 4)


@pytest.mark.parametrize("case", list(STACKS))
def test_stack_of_trains_of_different_lengths(case):
    """Two spiking layers of levels 2 and 5 stacked: the 2-step train is padded with 3 zero
    steps, and the layer reading the stack gets a 5-step train."""
    combine = STACKS[case]

    def body(self, x):
        a = F.relu(self.conv1(x))
        b = F.relu(self.conv2(a))
        h = F.relu(self.conv3(self.combine(a, b)))
        return self.fc(h.flatten(1))

    channels = 4 if "sum" in case or "flatten" in case else 8
    width = 8 if "flatten" in case else 4
    model = Net(body, conv1=nn.Conv2d(3, 4, 3, padding=1), conv2=nn.Conv2d(4, 4, 3, padding=1),
                conv3=nn.Conv2d(channels, 3, 1), fc=nn.Linear(3 * 4 * width, 3))
    model.combine = combine
    ann, _, _ = exact(model, (3, 4, 4), [2, 5, 3])
    assert dict(layer_num_steps_in(ann)) == {"relu": 1, "relu_1": 2, "relu_2": 5}
    stack = [n for n in models.graph.model_graph(ann).nodes if n.op == "torch.stack"]
    assert len(stack) == 1 and stack[0].role == "cat"


def _stack_viewed_with_the_batch_size_of_a(self, x):
    a = F.relu(self.conv1(x))
    b = F.relu(self.conv2(a))
    return torch.stack([a, b], 2).reshape(a.size(0), 8, 4, 4)


def _stack_viewed_net():
    return Net(_stack_viewed_with_the_batch_size_of_a, conv1=nn.Conv2d(3, 4, 3, padding=1),
               conv2=nn.Conv2d(4, 4, 3, padding=1))


STACK_VIEW_REFUSAL = ("node 'reshape' (Tensor.reshape) takes its batch dimension from the "
                      "size of 'relu', a 2-step train, for 'stack', a 5-step train")


def test_a_view_of_a_stack_with_the_shorter_trains_batch_size_is_refused_at_conversion():
    """The stack holds 5 steps x images in dim 0, the 2-step train ``a`` 2 x images: a view
    sized by ``a.size(0)`` has no spiking counterpart."""
    ann = qcfsify(_stack_viewed_net(), [3, 3]).eval()
    models.convert_to_snn(ann)  # equal lengths: taken
    models.set_levels(ann, [2, 5])  # levels changed after qcfsify (as training may)
    assert refusal(models.convert_to_snn, ann).startswith(STACK_VIEW_REFUSAL)


def test_qcfsify_refuses_what_conversion_refuses_for_the_levels_it_is_given():
    assert refusal(qcfsify, _stack_viewed_net(), [2, 5]).startswith(STACK_VIEW_REFUSAL)


SUMS = {
    "spatial sum head": lambda h: h.sum((2, 3)),
    "torch.sum spatial keepdim": lambda h: torch.sum(h, dim=(-1, -2), keepdim=True).flatten(1),
    "channel sum": lambda h: h.sum(1).flatten(1),
    "torch.sum channels keepdim, dim=-3": lambda h: torch.sum(h, -3, keepdim=True).flatten(1),
}


@pytest.mark.parametrize("case", list(SUMS))
def test_sums_over_non_batch_dims(case):
    reduce = SUMS[case]

    def body(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return self.fc(F.relu(self.mid(self.reduce(h))))

    features = 4 if "spatial" in case else 16
    model = Net(body, conv1=nn.Conv2d(3, 4, 3, padding=1), conv2=nn.Conv2d(4, 4, 3, padding=1),
                mid=nn.Linear(features, 6), fc=nn.Linear(6, 3))
    model.reduce = reduce
    ann, _, _ = exact(model, (3, 4, 4), [3, 2, 4])
    sums = [n for n in models.graph.model_graph(ann).nodes if "sum" in n.op]
    assert len(sums) == 1 and sums[0].role == "pool"


# --- several outputs ---------------------------------------------------------------------------

def _two_outputs(container):
    def body(self, x):
        features = F.relu(self.conv1(x))
        h = F.relu(self.conv2(features))
        logits = self.head(h).mean((2, 3))  # no nn.Linear: see test_outputs
        if container == "dict":
            return {"logits": logits, "features": features}
        if container == "tuple":
            return logits, features
        return [logits, features.sum((2, 3))]

    return Net(body, conv1=nn.Conv2d(3, 4, 3, padding=1), conv2=nn.Conv2d(4, 4, 3, padding=1),
               head=nn.Conv2d(4, 3, 1))


@pytest.mark.parametrize("container", ["dict", "tuple", "list"])
def test_outputs(container):
    """A dict, tuple or list of outputs: the spiking network returns the same container (a
    dict with the same keys in the same order), each output summed over its steps and close
    to the ANN's (assert_snn_exact compares them, as does snn(x) here)."""
    ann, x, runs = exact(_two_outputs(container), (3, 4, 4), [3, 5])
    expected = runs["ann"]
    assert type(expected) is {"dict": dict, "tuple": tuple, "list": list}[container]
    for sim in ("step", "counts"):
        out = models.convert_to_snn(ann, sim=sim)(x)
        assert type(out) is type(expected), (sim, type(out))
        if container == "dict":
            assert list(out) == ["logits", "features"]
        assert_logits_close(out, expected)


# --- ReLUs spelled as clamps -------------------------------------------------------------------

CLAMPS = {  # spelling: (the activation of call i = 1, 2, QCFS.cap)
    "x.clamp(min=0)": (lambda s, h, i: h.clamp(min=0), None),
    "torch.clamp(x, 0, 6)": (lambda s, h, i: torch.clamp(h, 0, 6), 6.0),
    "x.clamp(0, 6.0)": (lambda s, h, i: h.clamp(0, 6.0), 6.0),
    "torch.clip(x, 0)": (lambda s, h, i: torch.clip(h, 0), None),
    "x.clamp_min(0)": (lambda s, h, i: h.clamp_min(0), None),
    "F.hardtanh(x, 0, 6)": (lambda s, h, i: F.hardtanh(h, 0, 6), 6.0),
    "F.hardtanh(x, min_val=0.0, max_val=3)": (
        lambda s, h, i: F.hardtanh(h, min_val=0.0, max_val=3), 3.0),
    "nn.Hardtanh(0, 6)": (lambda s, h, i: getattr(s, f"act{i}")(h), 6.0),
}


@pytest.mark.parametrize("spelling", list(CLAMPS))
def test_clamp_spellings_become_qcfs_layers(spelling):
    """Each clamp at [0, m] (or [0, inf)) becomes its own QCFS layer whose cap is m."""
    activation, cap = CLAMPS[spelling]

    def body(self, x):
        h = self.activation(self, self.conv1(x), 1)
        h = self.activation(self, self.conv2(h), 2)
        return self.fc(h.flatten(1))

    model = Net(body, conv1=nn.Conv2d(3, 4, 3, padding=1), conv2=nn.Conv2d(4, 3, 3),
                fc=nn.Linear(3 * 2 * 2, 3), act1=nn.Hardtanh(0, 6), act2=nn.Hardtanh(0, 6))
    model.activation = activation
    ann = qcfsify(model, [4, 3])
    layers = models.qcfs_layers(ann)
    assert len(layers) == 2
    assert [layer.cap for _, layer in layers] == [cap, cap]
    ann, x = make_live(ann, (3, 4, 4))
    assert_snn_exact(ann, x, min_classes=1)


@pytest.mark.parametrize("module", [nn.ReLU6, lambda: nn.Hardtanh(0, 6)])
def test_every_call_of_a_shared_bounded_relu_module_keeps_its_cap(module):
    def body(self, x):
        return self.act(self.conv(self.act(x)))

    ann = qcfsify(Net(body, conv=nn.Conv2d(3, 3, 1), act=module()), 2)
    assert [(name, layer.cap) for name, layer in models.qcfs_layers(ann)] == \
        [("act", 6.0), ("act_1", 6.0)]


REFUSED_CLAMPS = {  # spelling: (the activation, the node named)
    "x.clamp(min=-1)": (lambda s, h: h.clamp(min=-1), "clamp"),
    "torch.clamp(x, -1, 1)": (lambda s, h: torch.clamp(h, -1, 1), "clamp"),
    "x.clamp(max=6)": (lambda s, h: h.clamp(max=6), "clamp"),
    "x.clamp(0.5)": (lambda s, h: h.clamp(0.5), "clamp"),
    "torch.clamp(x, 0, 0)": (lambda s, h: torch.clamp(h, 0, 0), "clamp"),
    "F.hardtanh(x)": (lambda s, h: F.hardtanh(h), "hardtanh"),
    "nn.Hardtanh()": (lambda s, h: s.act(h), "act"),
}


@pytest.mark.parametrize("spelling", list(REFUSED_CLAMPS))
def test_clamps_to_other_bounds_are_refused(spelling):
    """Other bounds are no ReLU: qcfsify (and convert, on a QCFS network) refuses them in one
    line naming the node."""
    activation, node = REFUSED_CLAMPS[spelling]

    def body(self, x):
        h = F.relu(self.conv1(x))
        return self.activation(self, self.conv2(h)).flatten(1)

    def qcfs_body(self, x):
        h = self.q(self.conv1(x))
        return self.activation(self, self.conv2(h)).flatten(1)

    parts = dict(conv1=nn.Conv2d(3, 4, 3), conv2=nn.Conv2d(4, 3, 3),
                 act=nn.Hardtanh())
    model = Net(body, **parts)
    model.activation = activation
    with pytest.raises(UnsupportedModelError) as error:
        qcfsify(model, 2)
    assert isinstance(error.value, ValueError) and isinstance(error.value, ModelError)
    message = str(error.value)
    assert "\n" not in message and f"node {node!r}" in message, message
    qcfs = Net(qcfs_body, q=QCFS(2, 1.0), **parts).eval()
    qcfs.activation = activation
    converted = refusal(models.convert_to_snn, qcfs)
    assert f"node {node!r}" in converted, converted


# --- other refusals of the new operations ------------------------------------------------------

def _refused_net(tail):
    def body(self, x):
        a = F.relu(self.conv1(x))
        b = F.relu(self.conv2(a))
        return self.tail(self, a, b)

    model = Net(body, conv1=nn.Conv2d(3, 4, 3, padding=1), conv2=nn.Conv2d(4, 4, 3, padding=1),
                pad=nn.ConstantPad2d(1, 0.5), up=nn.ConvTranspose2d(4, 4, 3, stride=2))
    model.tail = tail
    return model


REFUSED = {  # case: (what follows two spiking layers a and b, the refusal)
    "F.pad value=1.0": (lambda s, a, b: F.pad(a, (1, 1, 1, 1), value=1.0),
                        "pads with the constant 1.0"),
    "nn.ConstantPad2d value 0.5": (lambda s, a, b: s.pad(a), "pads with the constant 0.5"),
    "F.pad of the batch dim": (lambda s, a, b: F.pad(a, (0, 0, 0, 0, 0, 0, 1, 0)),
                               "the batch dimension included"),
    "torch.sum(x)": (lambda s, a, b: a + torch.sum(b), "sums over every dimension"),
    "x.sum()": (lambda s, a, b: a - b.sum(), "sums over every dimension"),
    "x.sum(0)": (lambda s, a, b: b.sum(0), "sums over the batch dimension"),
    "x.sum(dtype=)": (lambda s, a, b: b.sum((2, 3), dtype=torch.float64),
                      "sums with a dtype conversion"),
    "torch.stack dim=0": (lambda s, a, b: torch.stack([a, b]).sum(0),
                          "stacks along the batch dimension"),
    "torch.stack dim=-5": (lambda s, a, b: torch.stack([a, b], dim=-5).sum(0),
                           "stacks along the batch dimension"),
    "max pool after pixel shuffle of two layers' bursts":
        (lambda s, a, b: F.max_pool2d(F.pixel_shuffle(torch.cat([a, b], 1), 2), 2),
         "which is not a spike burst"),
    "max pool after nearest upsampling of a sum":
        (lambda s, a, b: F.max_pool2d(F.interpolate(a + b, scale_factor=2), 2),
         "which is not a spike burst"),
    "ConvTranspose2d output_size=": (lambda s, a, b: s.up(a, output_size=(10, 10)),
                                     "output_size"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_new_operations_refused_in_one_line(case):
    tail, reason = REFUSED[case]
    message = refusal(qcfsify, _refused_net(tail), 2)
    assert reason in message and "node '" in message, message


# --- T_eff's fan-in of a transposed convolution ------------------------------------------------

@pytest.mark.parametrize("options, hand", [
    # an output of a stride-2, k=3 transposed conv sums at most 2 taps per dim from each of
    # the 4 input channels
    (dict(stride=2), 4 * math.ceil(3 / 2) ** 2),
    (dict(stride=2, groups=2), 2 * math.ceil(3 / 2) ** 2),
    (dict(stride=2, dilation=2), 4 * 3 ** 2),  # dilation 2 = stride: every tap lands
    (dict(stride=3, dilation=2), 4 * 1 ** 2),  # j*2 mod 3 differ for j = 0, 1, 2
    (dict(stride=1, padding=1), 4 * 3 ** 2),
])
def test_teff_fan_in_of_a_transposed_conv(options, hand):
    def body(self, x):
        return F.relu(self.up(F.relu(self.conv(x))))

    up = nn.ConvTranspose2d(4, 6, 3, **options)
    ann = qcfsify(Net(body, conv=nn.Conv2d(3, 4, 3, padding=1), up=up), [2, 3])
    assert layer_fan_ins(ann) == [("relu", 3 * 3 * 3), ("relu_1", hand)]
    # independently: all-ones weights on an all-ones input count the taps summed per output
    ones = nn.ConvTranspose2d(4, 6, 3, bias=False, **options)
    with torch.no_grad():
        ones.weight.fill_(1.0)
        assert ones(torch.ones(1, 4, 7, 7)).max().item() == hand
