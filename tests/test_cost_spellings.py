"""The cost meter and the latencies on models written in ways the paper networks are not:
functional pools, channel shuffles, a Linear on a 3-D value, no weighted layer at all, an
addition of trains of different lengths, an unused QCFS layer."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
import snn_cost
from cost_meter import CostMeter
from helpers import ann_levels
from models import QCFS, UnsupportedModelError, convert_to_snn
from models.timing import latency_steps, pipelined_latency_steps

TIMING = {"T_eff": 0.0, "T_eff_reference": None, "latency_steps": 0,
          "latency_pipelined_steps": 0, "mean_level": 0.0}


def report_of(ann, x, sim="step"):
    ann = ann.double().eval()
    snn = convert_to_snn(ann, **({"sim": sim} if sim != "step" else {}))
    meter = CostMeter(snn)
    _, stats = snn.forward_with_stats(x.double(), keep_counts=True)
    meter.add(x.double(), stats)
    return meter, snn_cost.build_report(meter, TIMING)


class Pooled(nn.Module):
    """QCFS -> 2x2 average pool (spelled ``how``) -> 3x3 conv -> QCFS -> mean."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = QCFS(level=4, init_threshold=4.0)
        self.pool = nn.AvgPool2d(2)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.b = QCFS(level=3, init_threshold=1.0)

    def forward(self, x):
        h = self.a(x)
        if self.how == "module":
            h = self.pool(h)
        elif self.how == "positional":
            h = F.avg_pool2d(h, 2)
        elif self.how == "keyword":
            h = F.avg_pool2d(h, kernel_size=2)
        else:
            h = F.avg_pool2d(h, 2, stride=2, padding=0)
        return self.b(self.conv(h)).mean((2, 3))


@pytest.mark.parametrize("sim", ["step", "counts"])
def test_functional_average_pools_are_counted_as_the_module(sim):
    torch.manual_seed(0)
    x = torch.randint(0, 5, (2, 2, 6, 6)).double()  # integer spikes of the first layer
    reference = Pooled("module")
    counts = {}
    for how in ("module", "positional", "keyword", "stride-keyword"):
        model = Pooled(how)
        model.load_state_dict(reference.state_dict())
        meter, report = report_of(model, x, sim)
        counts[how] = meter.weighted["conv"].operations
    # Independent count: on the 3x3 pooled map a 3x3 conv with padding 1 reaches, from a
    # pooled cell at (i, j), [2, 3, 2][i] * [2, 3, 2][j] output positions of 3 channels; a
    # spike in the 6x6 map lands in the pooled cell (i // 2, j // 2).
    reach = torch.tensor([2.0, 3.0, 2.0])
    per_cell = (reach[:, None] * reach[None, :]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    expected = int((x * per_cell).sum()) * 3
    assert counts == dict.fromkeys(counts, expected)


def test_a_model_without_weighted_layers_has_a_report():
    # Second threshold 0.9: the pooled sums k/12 times 2/0.9 never sit exactly on a rounding
    # boundary, so the step path's summation order cannot move a count.
    model = nn.Sequential(QCFS(level=3, init_threshold=1.0), nn.AvgPool2d(2),
                          QCFS(level=2, init_threshold=0.9), nn.Flatten())
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64) * 1.5
    _, levels = ann_levels(model.double().eval(), x)
    meter, report = report_of(model, x)
    assert report["images"] == 3
    spikes = {row["layer"]: row["spikes_per_image"] for row in report["rows"]
              if row["kind"] == "spiking"}
    assert spikes == {name: int(value.sum()) / 3 for name, value in levels.items()}
    assert report["totals"]["accumulates_per_image"] == 0


class LinearOn3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = QCFS(level=4, init_threshold=4.0)
        self.linear = nn.Linear(6, 5)

    def forward(self, x):  # x: (B, 3, 6)
        return self.linear(self.a(x)).flatten(1)


def test_linear_on_a_3d_value_reaches_its_out_features():
    x = torch.randint(0, 5, (2, 3, 6)).double()
    meter, _ = report_of(LinearOn3D(), x)
    # every spike of the (3, 6) map reaches the 5 outputs of its row
    assert meter.weighted["linear"].operations == int(x.sum()) * 5
    assert meter.weighted["linear"].ann_macs == 2 * 3 * 6 * 5


class Shuffle(nn.Module):
    """A channel shuffle (view, transpose, contiguous, view) between two spiking layers."""

    def __init__(self):
        super().__init__()
        self.a = QCFS(level=4, init_threshold=4.0)
        self.conv = nn.Conv2d(4, 3, 1)
        self.b = QCFS(level=2, init_threshold=1.0)

    def forward(self, x):
        h = self.a(x)
        b, c, hh, ww = h.shape
        h = h.view(b, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(b, c, hh, ww)
        return self.b(self.conv(h)).mean((2, 3))


def test_channel_shuffle_is_tracked_through_contiguous():
    x = torch.randint(0, 5, (2, 4, 3, 3)).double()
    meter, report = report_of(Shuffle(), x)
    # a 1x1 conv: each spike reaches its position in the 3 output channels
    assert meter.weighted["conv"].operations == int(x.sum()) * 3
    assert report["totals"]["macs_per_image"] == 0  # nothing counted as dense


def test_shufflenet_report_runs_and_counts_every_spike():
    torch.manual_seed(0)
    model = models.create_model("tv:shufflenet_v2_x0_5", num_classes=4, levels=2).double()
    model.eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    _, levels = ann_levels(model, x)
    _, report = report_of(model, x, sim="counts")
    spikes = {row["layer"]: row["spikes_per_image"] for row in report["rows"]
              if row["kind"] == "spiking"}
    assert spikes == {name: int(value.sum()) for name, value in levels.items()}
    dense = {row["layer"] for row in report["rows"] if row["kind"] == "dense"}
    # Only the 1x1 convs right after a depthwise conv + BatchNorm (no activation between:
    # they are fed currents, not spikes) cost dense MACs; the convs after each channel
    # shuffle are fed by spikes.
    assert dense and all(name.endswith((".branch1.2", ".branch2.5")) for name in dense)


class LateBranch(nn.Module):
    """``h + branch(h)``: the branch's long train is folded into the sum's first step."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                                     nn.Conv2d(4, 4, 1))
        self.r1, self.r2, self.r3 = QCFS(level=1), QCFS(level=64), QCFS(level=1)

    def forward(self, x):
        h = self.r1(self.c1(x))
        return self.r3(h + self.c2(self.r2(self.c3(h)))).mean((2, 3))


def test_pipelined_latency_waits_for_an_operand_folded_into_the_first_step():
    model = LateBranch()
    # Sequential: r1 1 + 1 - 1 + 1 = 2 steps; r2 (T_in 1, L 64) 1 + 64 - 1 + 64 = 128; r3 2.
    assert latency_steps(model) == (132, [(1, 2), (1, 128), (1, 2)])
    # Pipelined: r2 starts when r1 starts emitting (step 1) and ends at 129; the sum has r1's
    # single step, which holds r2's whole window, so r3 starts at 129 and ends at 131.
    assert pipelined_latency_steps(model) == 131


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.used = QCFS(level=2)
        self.spare = QCFS(level=3)

    def forward(self, x):
        return self.used(self.conv(x)).mean((2, 3))


def test_a_qcfs_layer_that_forward_never_calls_is_refused():
    with pytest.raises(UnsupportedModelError, match="QCFS module 'spare' is never called") as e:
        convert_to_snn(Unused().eval())
    assert "\n" not in str(e.value)
    with pytest.raises(UnsupportedModelError, match="'spare'"):
        latency_steps(Unused())
