"""qcfsify, the graph converter's node rules (max pooling of bursts, addition and
concatenation of trains of different lengths, refusals), the tv: registry and input sizes."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from helpers import assert_snn_exact, calibrate_thresholds_, make_live
from models import QCFS, convert_to_snn, qcfsify


def meta_model(arch, levels=1):
    with torch.device("meta"):
        return models.create_model(arch, num_classes=10, levels=levels)


# --- qcfsify --------------------------------------------------------------------------------

def test_call_sites_name_the_qcfs_layers():
    names = [name for name, _ in models.qcfs_layers(meta_model("tv:resnet50"))]
    assert len(names) == 49
    # one ReLU module called three times in a bottleneck: three layers
    assert names[:4] == ["relu", "layer1.0.relu", "layer1.0.relu_1", "layer1.0.relu_2"]
    googlenet = [name for name, _ in models.qcfs_layers(meta_model("tv:googlenet"))]
    assert len(googlenet) == 57  # no ReLU module, 57 F.relu calls
    assert googlenet[:4] == ["conv1.relu", "conv2.relu", "conv3.relu", "inception3a.branch1.relu"]
    densenet = [name for name, _ in models.qcfs_layers(meta_model("tv:densenet121"))]
    assert len(densenet) == 121 and densenet[-1] == "relu"  # the top-level F.relu


def test_qcfsify_layers_are_in_call_order_and_trainable():
    torch.manual_seed(0)
    model = models.create_model("tv:resnet18", num_classes=4, levels=[2, 3] * 8 + [4],
                                init_threshold=2.0)
    layers = models.qcfs_layers(model)
    assert models.get_levels(model) == [2, 3] * 8 + [4]
    assert all(float(m.threshold.detach()) == 2.0 for _, m in layers)
    seen = []
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: seen.append(n)) for n, m in layers]
    x = torch.randn(4, 3, 32, 32)
    calibrate_thresholds_(model, x, percentile=0.5)
    for handle in handles:
        handle.remove()
    assert seen == [name for name, _ in layers]
    loss = F.cross_entropy(model.train()(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_qcfsify_copies_and_keeps_state_dict_keys():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU6(),
                        nn.Flatten(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    q = qcfsify(net, [2, 5])
    assert isinstance(net[1], nn.ReLU)  # the input is left unchanged
    assert set(q.state_dict()) == set(before) | {"1.threshold", "3.threshold"}
    assert models.get_levels(q) == [2, 5]
    with torch.no_grad():
        q.get_submodule("0").weight.add_(1)
    assert torch.equal(net[0].weight, before["0.weight"])


def test_levels_are_checked_with_the_layer_names():
    with pytest.raises(ValueError, match=r"17 QCFS layers \(relu, layer1\.0\.relu, "
                                         r"layer1\.0\.relu_1.*got 3 levels"):
        models.create_model("tv:resnet18", num_classes=10, levels=[4, 4, 4])
    with pytest.raises(ValueError, match="level"):
        models.create_model("tv:resnet18", num_classes=10, levels=0)


class SqueezeExcite(nn.Module):
    """conv-ReLU, then a squeeze-excitation gate: pool, two 1x1 convs, sigmoid, product."""

    def __init__(self, gate=nn.Sigmoid):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.relu = nn.ReLU()
        self.squeeze = nn.Conv2d(8, 2, 1)
        self.excite = nn.Conv2d(2, 8, 1)
        self.gate = gate()

    def forward(self, x):
        x = self.relu(self.conv(x))
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.gate(self.excite(F.relu(self.squeeze(scale))))
        return (x * scale).mean((2, 3))


def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_qcfsify_refuses_gates_and_attention_before_training():
    with pytest.raises(ValueError) as error:
        qcfsify(SqueezeExcite(), 2)
    assert one_line(error) == (
        "node 'gate' (Sigmoid) has no exact spiking counterpart (converted are "
        f"{models.graph.SUPPORTED})")
    with pytest.raises(ValueError) as error:  # a gate without a sigmoid: a product of trains
        qcfsify(SqueezeExcite(gate=nn.Identity), 2)
    assert one_line(error).startswith("node 'mul' (operator.mul) multiplies two non-constant "
                                      "tensors")


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = QCFS(2), QCFS(2)

    def forward(self, x):
        a = self.a(x)
        return self.b(a.add_(x)) + a  # the ANN's later use of a sees the in-place sum


class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_untraceable_models_are_refused_in_one_line():
    with pytest.raises(ValueError) as error:
        qcfsify(DataDependent(), 1)
    assert one_line(error).startswith("cannot trace DataDependent with torch.fx (TraceError")


def test_in_place_arithmetic_is_refused():
    with pytest.raises(ValueError) as error:
        convert_to_snn(InPlace())
    assert one_line(error).startswith("node 'add_' (Tensor.add_) modifies a tensor in place")


@pytest.mark.parametrize("arch, node, operation", [
    ("tv:efficientnet_b0", "features.0.2", "SiLU"),
    ("tv:vit_b_16", "expand", "Tensor.expand"),
    ("tv:mobilenet_v3_small", "features.0.2", "Hardswish"),
    ("tv:convnext_tiny", "features.0.1.layer_norm", "F.layer_norm"),
])
def test_torchvision_models_without_exact_counterpart_are_refused(arch, node, operation):
    with pytest.raises(ValueError) as error:
        meta_model(arch)
    assert one_line(error).startswith(f"{arch}: node '{node}' ({operation}) ")


def test_unknown_torchvision_name():
    with pytest.raises(ValueError, match="unknown torchvision classification model 'resnet19'"):
        models.create_model("tv:resnet19", num_classes=10, levels=1)


def test_model_args_rebuild_a_torchvision_model():
    import torchvision
    model = meta_model("tv:squeezenet1_1", levels=3)
    args = models.model_args_of(model, "tv:squeezenet1_1", "cifar", 10)
    assert args == {"arch": "tv:squeezenet1_1", "variant": "cifar", "num_classes": 10,
                    "levels": [3] * 26, "dropout": 0.0, "activation": "qcfs",
                    "torchvision": torchvision.__version__}
    rebuilt = models.create_model(args["arch"], num_classes=args["num_classes"],
                                  levels=args["levels"], variant=args["variant"])
    source = models.create_model("tv:squeezenet1_1", num_classes=10, levels=3)
    rebuilt.load_state_dict(source.state_dict())  # strict: the same keys and shapes
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(rebuilt.eval()(x), source.eval()(x))
    assert models.is_torchvision_arch("tv:squeezenet1_1") and not \
        models.is_torchvision_arch("vgg16")
    assert "tv:squeezenet1_1" not in models.list_models()
    assert "squeezenet1_1" in models.torchvision_names()


def test_minimum_input_size():
    alexnet = meta_model("tv:alexnet")
    assert models.min_input_size(alexnet) == 63
    assert models.accepts_input(alexnet, (3, 63, 63))
    assert not models.accepts_input(alexnet, (3, 62, 62))
    models.check_input_size(alexnet, (3, 64, 64), "tv:alexnet")
    with pytest.raises(ValueError) as error:
        models.check_input_size(alexnet, (3, 32, 32), "tv:alexnet")
    assert one_line(error) == ("tv:alexnet needs inputs of at least 63x63; got 32x32 (resize "
                               "the images to 63x63 or more)")
    resnet = models.create_model("resnet18", num_classes=10, levels=1)
    assert models.accepts_input(resnet, (3, 1, 1))  # adaptive pooling: any size
    assert not models.accepts_input(resnet, (1, 32, 32))  # wrong channels


# --- conversion rules -----------------------------------------------------------------------

def spiking_input(level):
    """QCFS with threshold == level: spike amplitude 1, so an integer input k in 0..level is
    emitted as exactly k spikes."""
    return QCFS(level=level, init_threshold=float(level))


class TwoLayersCatPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = spiking_input(4), spiking_input(2)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(torch.cat([self.a(x[:, :1]), self.b(x[:, 1:])], 1))


def test_max_pool_of_bursts_is_the_burst_of_the_largest_count_step_by_step():
    counts = torch.tensor([[[[0, 3, 1, 4], [2, 1, 0, 0], [1, 1, 2, 2], [0, 0, 4, 3]],
                            [[1, 0, 2, 0], [0, 0, 1, 2], [0, 0, 0, 1], [0, 0, 1, 1]]]],
                          dtype=torch.float64)
    model = TwoLayersCatPool().double()
    snn = convert_to_snn(model)
    trains = snn.trains(counts)
    pooled = trains["pool"]  # (T, B, C, 2, 2)
    largest = F.max_pool2d(counts, 2)  # [[3, 4], [1, 4]] and [[1, 2], [0, 1]]
    assert pooled.shape[0] == 4  # the 2-step layer b is zero-padded to 4 steps
    for t in range(4):
        assert torch.equal(pooled[t], (t < largest).double()), t  # spike t iff t < max count
    # a 2-step train stays within its 2 steps after padding and pooling
    assert not pooled[2:, :, 1].any()
    assert torch.equal(snn(counts), largest)
    assert torch.equal(convert_to_snn(model, sim="counts")(counts), largest)
    assert torch.equal(model.eval()(counts), largest)


class PoolOfSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = spiking_input(2), spiking_input(3)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.a(x) + self.b(x))


@pytest.mark.parametrize("sim", ["step", "counts"])
def test_max_pool_of_a_sum_of_trains_is_refused_on_both_paths(sim):
    with pytest.raises(ValueError) as error:
        convert_to_snn(PoolOfSum(), sim=sim)
    assert one_line(error).startswith("node 'pool' (MaxPool2d) max-pools the output of 'add' "
                                      "(operator.add), which is not a spike burst")


def test_max_pool_of_an_average_pool_is_refused():
    model = nn.Sequential(spiking_input(2), nn.AvgPool2d(2), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match=r"node '2' \(MaxPool2d\) max-pools the output of "
                                         r"'1' \(AvgPool2d\)"):
        convert_to_snn(model)


class MixedGraph(nn.Module):
    """Max pool of the analog image, functional pools, a residual sum of trains of different
    lengths fed to a convolution, a constant added and multiplied, a pre-activation BatchNorm
    after a concatenation, a channel shuffle and chunk, a mean over space."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = QCFS(3), QCFS(1)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
        self.bn_a = nn.BatchNorm2d(8)
        self.mix = nn.Conv2d(8, 8, 1)
        self.c = QCFS(4)
        self.bn = nn.BatchNorm2d(16)
        self.d = QCFS(2)
        self.branch = nn.Conv2d(8, 8, 3, padding=1, dilation=2, stride=1)
        self.e = QCFS(8)
        self.fc = nn.Linear(16, 5)
        self.register_buffer("offset", torch.linspace(-0.2, 0.2, 8).view(8, 1, 1))

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)              # analog input: one step, exact
        a = self.a(x)
        b = self.b(self.bn_a(self.conv_a(a)))
        s = self.mix(a + b + self.offset) * 0.5        # a 3-step train plus a 1-step one
        c = self.c(s)
        y = torch.cat([c, b], 1)                       # 4 and 1 steps: zero-padded to 4
        n, ch, h, w = y.size()
        y = y.view(n, 2, ch // 2, h, w).transpose(1, 2).contiguous().view(n, ch, h, w)
        d = self.d(self.bn(y))                         # BatchNorm after a concatenation
        left, right = d.chunk(2, dim=1)
        e = self.e(F.avg_pool2d(self.branch(right), 2, stride=1, padding=1) - 0.1)
        return self.fc(torch.cat([left.mean((2, 3)), e.mean((2, 3))], 1))


def test_mixed_graph_is_exact_on_both_paths():
    model, x = make_live(MixedGraph(), (3, 16, 16), images=3)
    assert_snn_exact(model, x)
    fates = {name: fate for name, _, fate in convert_to_snn(model).fates()}
    assert fates["bn_a"] == "folded into 'conv_a'"
    assert fates["bn"] == "scale every step, shift once per window"
    assert fates["max_pool2d"] == "max of the one-step analog input"
    stats = {s.name: s for s in convert_to_snn(model).forward_with_stats(x)[1]}
    # the sum a + b takes the first operand's length (3); the concatenation the longest (4)
    assert stats["c"].num_steps_in == 3 and stats["d"].num_steps_in == 4


def test_trains_are_explicit_and_time_major():
    model = nn.Sequential(spiking_input(4), nn.Conv2d(1, 2, 1, bias=False), spiking_input(2))
    snn = convert_to_snn(model.double())
    x = torch.tensor([[[[3.0]]], [[[1.0]]]], dtype=torch.float64)
    trains = snn.trains(x)
    assert trains["0"].shape == (4, 2, 1, 1, 1)
    assert trains["0"][:, 0].flatten().tolist() == [1, 1, 1, 0]
    assert trains["1"].shape == (4, 2, 2, 1, 1)
    assert trains["2"].shape == (2, 2, 2, 1, 1)
    counts = convert_to_snn(model.double(), sim="counts").trains(x)
    assert counts["0"].shape == (1, 2, 1, 1, 1) and counts["0"].flatten().tolist() == [3, 1]
