"""Exact or refused, for every spelling: fixed adversarial cases, each either refused at
qcfsify / conversion time with one line naming the node (or tensor), or exact on both
simulation paths. Tiny float64 models, 2-4 images."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from helpers import (ann_levels, assert_counts_and_logits, assert_snn_exact, make_live,
                     multi_segment_snn)
from models import QCFS, convert_to_snn, qcfsify

SIMS = ("step", "counts")


def refusal(call, *args, **kwargs):
    """The one-line message of the ValueError ``call(*args, **kwargs)`` raises."""
    with pytest.raises(ValueError) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def small_net(dropout=False):
    layers = [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), QCFS(2, 1.0), nn.Conv2d(4, 4, 3),
              QCFS(3, 1.0), nn.Flatten()]
    layers += [nn.Dropout(0.5)] if dropout else []
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(*layers, nn.Linear(4 * 4 * 4, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.5)
        model[1].running_mean.normal_(0, 0.2, generator=generator)
        model[1].running_var.uniform_(0.5, 2.0, generator=generator)
        model[2].threshold.fill_(1.0)
        model[4].threshold.fill_(1.0)
    return model


# --- training mode, non-finite values, empty batches ------------------------------------------

@pytest.mark.parametrize("dropout", [False, True])
def test_training_mode_is_refused(dropout):
    model = small_net(dropout)
    message = refusal(convert_to_snn, model)
    assert message == ("BatchNorm2d '1' is in training mode (it would use batch statistics or "
                       "drop units); call .eval() first")
    model.eval()
    if dropout:
        model[6].train()
        assert refusal(convert_to_snn, model).startswith("Dropout '6' is in training mode")
    else:
        convert_to_snn(model)


@pytest.mark.parametrize("tensor, value", [("0.weight", float("nan")), ("3.bias", float("inf")),
                                           ("1.running_mean", float("nan")),
                                           ("1.running_var", float("inf")),
                                           ("1.weight", -float("inf"))])
def test_non_finite_weights_and_statistics_are_refused_naming_the_tensor(tensor, value):
    model = small_net().eval()
    state = dict(model.named_parameters())
    state.update(model.named_buffers())
    with torch.no_grad():
        state[tensor].view(-1)[0] = value
    message = refusal(convert_to_snn, model, sim="counts")
    kind = "NaN" if value != value else "infinite"
    assert message.startswith(f"'{tensor}' holds {kind} values (1 of ")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_thresholds_are_refused(value):
    model = small_net().eval()
    with torch.no_grad():
        model[4].threshold.fill_(value)
    assert refusal(convert_to_snn, model).startswith("QCFS layer '4' has threshold")


@pytest.mark.parametrize("sim", SIMS)
def test_non_finite_inputs_give_what_the_ann_gives(sim):
    model = small_net().eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[0, 0, 0, 0] = float("nan")
    x[1, 1, 2, 2] = float("inf")  # QCFS clips it: a finite level in the ANN
    x[2, 2, 3, 3] = -float("inf")
    snn = convert_to_snn(model, sim=sim)
    expected, out = model(x).detach(), snn(x)
    assert torch.isnan(expected[0]).all() and torch.isnan(out[0]).all()
    torch.testing.assert_close(out[1:], expected[1:], rtol=1e-9, atol=1e-9)
    # spike counts of NaN inputs are undefined: refused, never cast to an integer
    message = refusal(snn.forward_with_stats, x)
    assert message.startswith("spiking layer '2': 4 neuron(s) received a NaN input")
    _, stats = snn.forward_with_stats(x[1:], keep_counts=True)
    assert [int(s.counts.min()) >= 0 for s in stats] == [True, True]


@pytest.mark.parametrize("sim", SIMS)
def test_empty_batch(sim):
    snn = convert_to_snn(small_net().eval(), sim=sim)
    logits, stats = snn.forward_with_stats(torch.zeros(0, 3, 8, 8, dtype=torch.float64),
                                           keep_counts=True)
    assert logits.shape == (0, 3)
    assert [(s.name, s.batch, s.neurons, s.emitted_spikes, tuple(s.counts.shape))
            for s in stats] == [("2", 0, 144, 0, (0, 4, 6, 6)), ("4", 0, 64, 0, (0, 4, 4, 4))]


# --- in-place aliasing -----------------------------------------------------------------------

class InPlaceReLUAfterAlias(nn.Module):
    """torchvision-style ``identity = x`` then an in-place ReLU: identity is the ReLU's
    output in the eager model."""

    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.conv, self.relu, self.conv2 = nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True), \
            nn.Conv2d(3, 3, 1)

    def forward(self, x):
        x = self.conv(x)
        identity = x
        if self.spelling == "module":
            x = self.relu(x)
        elif self.spelling == "function":
            x = F.relu(x, True)
        elif self.spelling == "method":
            x = x.relu_()
        else:
            x = F.relu(x)  # out of place
        return F.relu(self.conv2(x) + identity).mean((2, 3))


class AugmentedSkip(nn.Module):
    """``skip = b; b += a``: skip is the sum in the eager model."""

    def __init__(self, view=False):
        super().__init__()
        self.conv, self.conv2, self.view = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), view

    def forward(self, x):
        a, b = F.relu(self.conv(x)), F.relu(self.conv2(x))
        skip = b.view(b.size(0), -1) if self.view else b
        b += a
        return F.relu(b).flatten(1) + skip.flatten(1)


@pytest.mark.parametrize("spelling, node, operation", [("module", "relu", "ReLU"),
                                                      ("function", "relu", "F.relu"),
                                                      ("method", "relu_", "Tensor.relu_")])
def test_in_place_relu_read_again_is_refused_by_qcfsify(spelling, node, operation):
    assert refusal(qcfsify, InPlaceReLUAfterAlias(spelling), 2) == (
        f"node '{node}' ({operation}) changes 'conv' in place and node 'add' reads it "
        "afterwards; QCFS layers and the spiking network compute out of place, so that node "
        "would see the old value (write it out of place: inplace=False, or b = b + a)")
    qcfsify(InPlaceReLUAfterAlias("out of place"), 2)


@pytest.mark.parametrize("view", [False, True])
def test_augmented_assignment_read_again_is_refused(view):
    message = refusal(qcfsify, AugmentedSkip(view), 2)
    assert message.startswith("node 'iadd' (operator.iadd) changes 'relu_1' in place and node "
                              "'flatten_1' reads it afterwards")


def test_in_place_without_a_later_reader_is_exact():
    """torchvision's own pattern: ``out = bn(conv(x)); out += identity; relu(out)``, with
    nn.ReLU(inplace=True) on values nobody reads again."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = self.relu(self.stem(x))
            identity = x
            out = self.bn(self.conv(x))
            out += identity
            out = self.relu(out)
            return self.fc(out.mean((2, 3)))

    assert_snn_exact(*make_live(qcfsify(Block(), [3, 2]), (3, 8, 8), images=4))


# --- every spelling of an operation reads the same (arguments bound to signatures) -----------

class TwoTrains(nn.Module):
    """Two spiking layers of different lengths (3 and 2 steps) combined by ``combine``, then
    a spiking layer, a spatial mean and a linear layer; the first conv is called with
    ``input=``."""

    def __init__(self, combine, channels=4):
        super().__init__()
        self.combine = combine
        self.conv_a, self.conv_b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.a, self.b, self.c = QCFS(3), QCFS(2), QCFS(4)
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        a, b = self.a(self.conv_a(input=x)), self.b(self.conv_b(x))
        return self.fc(self.c(self.combine(a, b)).mean((2, 3)))


SPELLINGS = {
    "torch.add(a, other=b)": (lambda a, b: torch.add(a, other=b), 4),
    "a.add(other=b)": (lambda a, b: a.add(other=b), 4),
    "torch.sub(a, other=b)": (lambda a, b: torch.sub(a, other=b), 4),
    "torch.add(other=b, input=a)": (lambda a, b: torch.add(other=b, input=a), 4),
    "b.sub(a, alpha=1)": (lambda a, b: b.sub(a, alpha=1), 4),
    "torch.cat(tensors=[a, b], dim=1)": (lambda a, b: torch.cat(tensors=[a, b], dim=1), 8),
    "torch.cat(a.chunk(2, 1), 1) + b": (lambda a, b: torch.cat(a.chunk(2, 1), 1) + b, 4),
    "a.view(size=...) + b": (lambda a, b: a.view(size=(a.size(0), 4, -1)).view(a.size()) + b,
                             4),
    "a.permute(dims=...)": (lambda a, b: a.permute(dims=(0, 2, 3, 1)).permute(0, 3, 1, 2), 4),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_keyword_spellings_are_exact(spelling):
    combine, channels = SPELLINGS[spelling]
    model, x = make_live(TwoTrains(combine, channels), (3, 6, 6), images=4)
    assert_snn_exact(model, x)


@pytest.mark.parametrize("combine, message", [
    (lambda a, b: torch.mul(input=a, other=b),
     "node 'mul' (torch.mul) multiplies two non-constant tensors"),
    (lambda a, b: a.mul(other=b), "node 'mul' (Tensor.mul) multiplies two non-constant tensors"),
    (lambda a, b: torch.div(a, other=b), "node 'div' (torch.div) divides by a non-constant"),
    (lambda a, b: torch.add(a, other=b, alpha=2), "node 'add' (torch.add) uses alpha"),
    (lambda a, b: a.view(shape=(a.size(0), -1)),
     "node 'view' (Tensor.view) cannot be bound to its signature (argument 'shape'): got an "
     "unexpected keyword argument 'shape'"),
], ids=["mul(input=, other=)", "a.mul(other=)", "div(other=)", "alpha=2", "view(shape=)"])
def test_keyword_spellings_are_refused(combine, message):
    for convert in (convert_to_snn, lambda m: qcfsify(m, 1)):
        assert refusal(convert, TwoTrains(combine).eval()).startswith(message)


# --- dims resolved against ranks; pools, broadcasting, the batch size -------------------------

class Branches(nn.Module):
    """A one-channel spiking layer ``a`` (3 steps) and an eight-channel one ``b`` (2 steps),
    both 4-D, and the analog conv output ``x8``, combined by ``combine``; then a spiking layer,
    a spatial mean and a linear layer."""

    def __init__(self, combine):
        super().__init__()
        self.combine = combine
        self.conv1, self.conv8 = nn.Conv2d(3, 1, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b, self.c = QCFS(3), QCFS(2), QCFS(4)
        self.fc = nn.Linear(8, 3)
        self.register_buffer("offset", torch.linspace(-0.5, 0.5, 8).view(1, 8, 1, 1))

    def forward(self, x):
        x8 = self.conv8(x)
        combined = self.combine(self, self.a(self.conv1(x)), self.b(x8), x8)
        return self.fc(self.c(combined).mean((2, 3)))


RANK_REFUSALS = {
    "a.mean(-4, keepdim=True)": (
        lambda s, a, b, x8: b.mean(-4, keepdim=True),
        "node 'mean' (Tensor.mean) averages over the batch dimension (dim -4 of a 4-D value)"),
    "torch.cat([b, b], -4)": (
        lambda s, a, b, x8: torch.cat([b, b], -4),
        "node 'cat' (torch.cat) concatenates along the batch dimension (dim -4 of a 4-D value)"),
    "b.flatten(-4)": (lambda s, a, b, x8: b.flatten(-4).view(-1, 8, 6, 6),
                      "node 'flatten' (Tensor.flatten) flattens from the batch dimension"),
    "b.transpose(-4, 1)": (lambda s, a, b, x8: b.transpose(-4, 1),
                           "node 'transpose' (Tensor.transpose) transposes the batch dimension"),
    "b.unsqueeze(-5)": (lambda s, a, b, x8: b.unsqueeze(-5)[0],
                        "node 'unsqueeze' (Tensor.unsqueeze) unsqueezes the batch dimension"),
    "F.max_pool3d on 4-D": (
        lambda s, a, b, x8: F.max_pool3d(x8, (2, 1, 1)).repeat(1, 2, 1, 1),
        "node 'max_pool3d' (F.max_pool3d) reads a 4-D value (the unbatched form"),
    "F.max_pool2d on 3-D": (
        lambda s, a, b, x8: F.max_pool2d(x8.flatten(2), (2, 1)).view(-1, 8, 6, 6),
        "node 'max_pool2d' (F.max_pool2d) reads a 3-D value (the unbatched form"),
    "F.avg_pool2d on 3-D": (
        lambda s, a, b, x8: F.avg_pool2d(b.flatten(2), (2, 1)).view(-1, 8, 6, 6),
        "node 'avg_pool2d' (F.avg_pool2d) reads a 3-D value (the unbatched form"),
    "F.adaptive_max_pool1d on 2-D": (
        lambda s, a, b, x8: F.adaptive_max_pool1d(x8.mean((2, 3)), 4).view(-1, 8, 1, 1),
        "node 'adaptive_max_pool1d' (F.adaptive_max_pool1d) reads a 2-D value (the unbatched"),
    "b / b.size(0)": (lambda s, a, b, x8: b / b.size(0),
                      "node 'truediv' (operator.truediv) uses the batch size (node 'size')"),
    "b.view(-1, b.size(0))": (lambda s, a, b, x8: b.view(-1, b.size(0)).view(-1, 8, 6, 6),
                              "node 'view' (Tensor.view) uses the batch size (node 'size')"),
    "b.view(4 * b.size(0) * 72)": (
        lambda s, a, b, x8: b.view(4 * b.size(0) * 72).view(-1, 8, 6, 6),
        "node 'view' (Tensor.view) uses the batch size (node 'mul_1')"),
    "b.view(a.size(0), -1)": (
        lambda s, a, b, x8: b.view(a.size(0), -1).view(-1, 8, 6, 6),
        "node 'view' (Tensor.view) takes its batch dimension from the size of 'a', a 3-step "
        "train, for 'b', a 2-step train"),
    "torch.cat([a, buffer], 1)": (
        lambda s, a, b, x8: torch.cat([a, s.offset[:, :7].expand(1, 7, 6, 6)], 1),
        "node 'cat' (torch.cat) concatenates the constant"),
}


@pytest.mark.parametrize("case", RANK_REFUSALS)
def test_batch_dimension_uses_are_refused(case):
    combine, message = RANK_REFUSALS[case]
    # qcfsify checks the graph at the levels it is given: the model's own (trains of
    # different lengths, which some of these refusals need)
    for convert in (convert_to_snn, lambda m: qcfsify(m, models.get_levels(m))):
        assert refusal(convert, Branches(combine).eval()).startswith(message)


RANK_EXACT = {
    "b.mean((-1, -2), keepdim=True)": lambda s, a, b, x8: b.mean((-1, -2), keepdim=True) + b,
    "a + buffer (1 -> 8 channels)": lambda s, a, b, x8: a + s.offset,
    "buffer + a": lambda s, a, b, x8: s.offset + a,
    "a + b (1 + 8 channels, 3 + 2 steps)": lambda s, a, b, x8: a + b,
    "b - a": lambda s, a, b, x8: b - a,
    "torch.cat([b, b], -3)[:, 4:12]": lambda s, a, b, x8: torch.cat([b, b], -3)[:, 4:12],
    "b.view(b.size(0), -1)": lambda s, a, b, x8: b.view(b.size(0), -1).view(b.shape),
    "b.flatten(-2).unflatten(-1, (6, 6))": lambda s, a, b, x8: b.flatten(-2).unflatten(-1,
                                                                                      (6, 6)),
}


@pytest.mark.parametrize("case", RANK_EXACT)
def test_dims_resolved_against_ranks_are_exact(case):
    model, x = make_live(Branches(RANK_EXACT[case]), (3, 6, 6), images=4)
    assert_snn_exact(model, x)


class LinearOnChannels(nn.Module):
    """nn.Linear on a (B, C, F) value, then BatchNorm1d(C): the BatchNorm normalises the C
    axis, not the Linear's output features, so it must not be folded into the Linear."""

    def __init__(self, channels, features):
        super().__init__()
        self.conv = nn.Conv1d(2, channels, 1)
        self.a, self.c = QCFS(3), QCFS(2)
        self.linear, self.bn = nn.Linear(features, features), nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        return self.fc(self.c(self.bn(self.linear(self.a(self.conv(x))))).mean(2))


@pytest.mark.parametrize("channels, features", [(4, 4), (4, 6)])
def test_batchnorm_after_a_linear_on_3d_is_not_folded(channels, features):
    model, x = make_live(LinearOnChannels(channels, features), (2, features), images=4)
    assert_snn_exact(model, x)
    fates = dict((name, fate) for name, _, fate in convert_to_snn(model).fates())
    assert fates["bn"] == "scale every step, shift once per window"
    # on a 2-D value the Linear's features are the BatchNorm's channels: folded
    flat = nn.Sequential(nn.Linear(4, 5), QCFS(2), nn.Linear(5, 5), nn.BatchNorm1d(5), QCFS(3),
                         nn.Linear(5, 3))
    model, x = make_live(flat, (4,), images=4)
    assert_snn_exact(model, x)  # the input's rank unknown: not folded, exact all the same
    assert dict((n, f) for n, _, f in convert_to_snn(model).fates())["3"] == \
        "scale every step, shift once per window"
    fates = convert_to_snn(model, input_shape=(4,)).fates()
    assert dict((n, f) for n, _, f in fates)["3"] == "folded into '2'"


# --- ties on the step path -------------------------------------------------------------------
# A spiking layer fed through weightless operations only must give the ANN's level even where
# the ANN's pre-activation sits exactly on a level boundary: the per-step currents may sum to
# a value an ulp below it (3 x (1/6) is 0.9999999999999999, not 1.0).

def assert_counts_equal_ann(model, x, sims=SIMS):
    """Every neuron's count is the ANN's level on both paths, and something fires."""
    runs = assert_snn_exact(model, x, sims=sims, alive=False)
    assert all(s.emitted_spikes > 0 for s in runs[sims[0]][1])
    return runs


def test_average_pool_tie_at_half_a_spike():
    """relu -> avg_pool2d(2) -> relu, thresholds 4.0, levels 3 -> 2, input 4.0 at one pixel:
    the ANN's second pre-activation is 4.0 / 4 = 1.0, half the amplitude 4.0 / 2 = 2.0, so
    floor(1.0 / 2.0 + 1/2) = 1 spike; the three steps of (4/3) / 4 / 2 = 1/6 each sum to
    0.9999999999999999."""
    model = nn.Sequential(QCFS(3, 4.0), nn.AvgPool2d(2), QCFS(2, 4.0), nn.Flatten()).double()
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    x[0, 0, 0, 0] = 4.0
    runs = assert_counts_equal_ann(model.eval(), x)
    assert [int(s.counts.sum()) for s in runs["step"][1]] == [3, 1]


class TieBesideAConv(nn.Module):
    """The tie above concatenated with a convolution's output before the next spiking layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = QCFS(3, 4.0), QCFS(2, 4.0)
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.5)
            self.conv.bias.zero_()

    def forward(self, x):
        pooled = F.avg_pool2d(self.a(x), 2)
        return self.b(torch.cat([pooled, self.conv(F.avg_pool2d(x, 2))], 1)).flatten(1)


def test_tie_beside_a_weighted_operand():
    """The spiking part of the next layer's input is evaluated on window values although a
    weighted layer feeds the same layer: channel 0 is 1.0 exactly (one spike, as above),
    channel 1 the convolution's 0.5 * 1.0 = 0.5 (no spike)."""
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    x[0, 0, 0, 0] = 4.0
    runs = assert_counts_equal_ann(TieBesideAConv().double().eval(), x)
    assert [s.counts.flatten().tolist() for s in runs["step"][1]] == [[3, 0, 0, 0], [1, 0]]


class ConvPoolConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                                      nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class SumThenMaxPool(nn.Module):
    """relu(a + b) at levels 6, 3 -> 5, then relu(maxpool(relu(...))) at 5 -> 5."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        s = F.relu(F.relu(self.conv_a(x)) + F.relu(self.conv_b(x)))
        return self.fc(F.relu(self.pool(s)).flatten(1))


@pytest.mark.parametrize("threshold", [4.0, 1.0])
@pytest.mark.parametrize("net, levels", [(ConvPoolConv, [3, 2, 4]),
                                         (SumThenMaxPool, [6, 3, 5, 5])],
                         ids=["conv-relu-avgpool-relu-conv-relu", "relu(a+b), relu(maxpool)"])
def test_equal_thresholds_before_training_are_exact(net, levels, threshold):
    """What qcfsify produces before training: every threshold equal, so layers joined by a
    pool, a max pool or an addition often meet exactly on level boundaries."""
    torch.manual_seed(0)
    model = qcfsify(net(), levels, init_threshold=threshold).double().eval()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64) * 2
    assert_counts_equal_ann(model, x)


def test_ties_stay_exact_across_chunks():
    """The window values travel with the step simulator's segments and chunks."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.ReLU(),
                          nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model = qcfsify(model, [3, 2, 5], init_threshold=1.0).double().eval()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64) * 2
    logits, levels = ann_levels(model, x)
    assert_counts_and_logits(multi_segment_snn(model, x), x, logits, levels)


class FlatMean(nn.Module):
    """An MLP on (B, 2, F) inputs: no convolution fixes the input's rank."""

    def __init__(self):
        super().__init__()
        self.linear, self.a, self.fc = nn.Linear(5, 5), QCFS(3), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.a(self.linear(x)).mean(-2))


def test_negative_dims_of_unknown_rank_need_the_input_shape():
    assert refusal(convert_to_snn, FlatMean().eval()) == (
        "node 'mean' (Tensor.mean) averages over dim -2 of a value whose rank is not known "
        "statically; give the dim as a non-negative number (or the input shape, "
        "input_shape=...); average over the other dimensions only")
    model, x = make_live(FlatMean(), (2, 5), images=4)
    logits, levels = ann_levels(model, x)
    for sim in SIMS:
        assert_counts_and_logits(convert_to_snn(model, sim=sim, input_shape=(2, 5)), x, logits,
                                 levels, label=sim)
    qcfsify(nn.Sequential(nn.Linear(5, 5), nn.ReLU(), Mean(-2)), 2, input_shape=(2, 5))
    # with the input shape, dim -3 of the (B, 2, 5) values is the batch dimension
    with pytest.raises(ValueError, match="averages over the batch dimension"):
        convert_to_snn(nn.Sequential(nn.Linear(5, 5), Mean(-3)).eval(), input_shape=(2, 5))


class Mean(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return x.mean(self.dim)


def test_input_shape_fixes_the_shape_the_network_accepts():
    model = small_net().eval()
    snn = convert_to_snn(model, input_shape=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(snn(x), convert_to_snn(model)(x), rtol=0, atol=0)
    message = refusal(snn, torch.randn(2, 3, 9, 9, dtype=torch.float64))
    assert message == ("the spiking network was converted for inputs of shape (3, 8, 8) per "
                       "image, got (3, 9, 9); convert it again with input_shape=(3, 9, 9) (or "
                       "without input_shape)")
    assert refusal(snn.trains, torch.randn(1, 3, 9, 9, dtype=torch.float64)) == message


@pytest.mark.slow
def test_create_model_checks_the_input_shape():
    model = models.create_model("resnet20", num_classes=10, levels=2, input_shape=(3, 32, 32))
    assert len(models.qcfs_layers(model)) == 19
    assert refusal(models.create_model, "tv:inception_v3", num_classes=10, levels=1,
                   input_shape=(3, 32, 32)) == (
        "tv:inception_v3 needs inputs of at least 75x75; got 32x32 (resize the images to "
        "75x75 or more)")

