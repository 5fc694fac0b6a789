"""Exact or refused, for every spelling: fixed adversarial cases, each either refused at
qcfsify / conversion time with one line naming the node (or tensor), or exact on both
simulation paths. Tiny float64 models, 2-4 images."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from helpers import assert_snn_exact, make_live
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
