"""Registry, levels validation, training mode and QCFS arithmetic."""
import pytest
import torch

import models
from helpers import calibrate_thresholds_
from models import QCFS, create_model, list_models, qcfs_layers

EXPECTED_LAYERS = {"vgg16": 15, "resnet18": 17, "resnet34": 33, "resnet20": 19, "vgg_small": 5}
VARIANTS = ["cifar", "imagenet"]


def mixed_levels(count, seed=0):
    """Levels drawn from {1, 2, 3, 4, 8, 16} with adjacent layers differing."""
    choices = [1, 2, 3, 4, 8, 16]
    generator = torch.Generator().manual_seed(seed)
    levels = []
    while len(levels) < count:
        value = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        if not levels or value != levels[-1]:
            levels.append(value)
    return levels


def test_registry_lists_paper_architectures_first():
    assert list_models()[:3] == ["vgg16", "resnet18", "resnet34"]


@pytest.mark.parametrize("arch", list_models())
@pytest.mark.parametrize("variant", VARIANTS)
def test_layer_count_and_levels(arch, variant):
    levels = mixed_levels(EXPECTED_LAYERS[arch])
    model = create_model(arch, num_classes=7, levels=levels, variant=variant)
    layers = qcfs_layers(model)
    assert len(layers) == EXPECTED_LAYERS[arch]
    assert models.get_levels(model) == levels
    assert [m.level for _, m in layers] == levels
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_resnet_qcfs_order_is_forward_order():
    model = create_model("resnet18", num_classes=10, levels=1)
    names = [name for name, _ in qcfs_layers(model)]
    assert names[:3] == ["conv1.2", "conv2_x.0.residual_function.2", "conv2_x.0.act"]
    seen = []
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: seen.append(n))
             for n, m in qcfs_layers(model)]
    model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen == names


VGG16_LAYERS = ("layer1.2, layer1.6, layer2.2, layer2.6, layer3.2, layer3.6, layer3.10, "
                "layer4.2, layer4.6, layer4.10, layer5.2, layer5.6, layer5.10, classifier.2, "
                "classifier.5")


@pytest.mark.parametrize("bad, message", [
    ([4] * 14, f"the model has 15 QCFS layers ({VGG16_LAYERS}); got 14 levels"),
    ([4] * 14 + [0], "level of classifier.5 must be an integer >= 1, got 0"),
    ([4] * 14 + [-1], "level of classifier.5 must be an integer >= 1, got -1"),
    ([4] * 14 + [2.5], "level of classifier.5 must be an integer >= 1, got 2.5"),
    ("4", "levels must be an int or a sequence of ints, got the string '4' (parse "
          "comma-separated text with utils.parse_levels first)"),
    ([4] * 14 + ["4"], "level of classifier.5 must be an integer >= 1, got '4'"),
    (0, "level must be an integer >= 1, got 0"),
    (True, "levels must be an int or a sequence of ints, got True"),
])
def test_bad_levels_raise_value_error(bad, message):
    with pytest.raises(ValueError) as info:
        create_model("vgg16", num_classes=10, levels=bad)
    assert str(info.value) == message


def test_unknown_arch_and_variant():
    with pytest.raises(ValueError, match="unknown arch 'vgg11'.*vgg16"):
        create_model("vgg11", num_classes=10, levels=4)
    with pytest.raises(ValueError, match="unknown variant"):
        create_model("vgg16", num_classes=10, levels=4, variant="tiny")


def test_no_module_level_state():
    """resnet18, resnet34, resnet18 in one process: the two resnet18 are identical."""
    first = create_model("resnet18", num_classes=10, levels=mixed_levels(17))
    create_model("resnet34", num_classes=10, levels=mixed_levels(33, seed=1))
    again = create_model("resnet18", num_classes=10, levels=mixed_levels(17))
    assert str(first) == str(again)
    assert {k: v.shape for k, v in first.state_dict().items()} == \
        {k: v.shape for k, v in again.state_dict().items()}


@pytest.mark.parametrize("arch", [pytest.param(arch, marks=() if arch == "vgg_small" else
                                                 pytest.mark.slow) for arch in list_models()])
@pytest.mark.parametrize("variant", VARIANTS)
def test_training_mode_every_parameter_gets_a_gradient(arch, variant):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5, levels=mixed_levels(EXPECTED_LAYERS[arch]),
                         variant=variant)
    size = 32 if variant == "cifar" else 64
    x = torch.randn(4, 3, size, size)
    # Thresholds from the data, so no layer is silent: a silent layer passes no gradient to
    # the weights after it, and the test would blame the model for the initialisation.
    calibrate_thresholds_(model, x, percentile=0.5)
    loss = torch.nn.functional.cross_entropy(model.train()(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} received a zero gradient"


def test_qcfs_forward_values_hand_computed():
    layer = QCFS(level=4, init_threshold=2.0)  # step 0.5
    x = torch.tensor([-1.0, 0.0, 0.24, 0.25, 0.74, 0.75, 1.9, 2.1, 5.0])
    expected = [0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert layer(x).tolist() == expected
    assert layer.quantize(x).tolist() == [0, 0, 0, 1, 1, 2, 4, 4, 4]


def test_qcfs_gradient_is_straight_through():
    layer = QCFS(level=4, init_threshold=2.0)
    x = torch.tensor([-1.0, 0.3, 1.1, 3.0], requires_grad=True)
    y = layer(x)
    y.sum().backward()
    # dy/dx: 1 inside [0, threshold], 0 outside
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    # dy/dthreshold: (y - x)/threshold inside, 1 above, 0 below
    expected = (0.5 - 0.3) / 2 + (1.0 - 1.1) / 2 + 1.0
    assert layer.threshold.grad.item() == pytest.approx(expected, rel=1e-6)


def test_thresholds_are_kept_positive():
    model = create_model("vgg_small", num_classes=3, levels=2, init_threshold=0.01)
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    for _, layer in qcfs_layers(model):
        layer.threshold.grad = torch.ones_like(layer.threshold)
    optimizer.step()
    assert all(layer.threshold.item() < 0 for _, layer in qcfs_layers(model))
    models.clamp_thresholds_(model, min_value=1e-3)
    assert all(layer.threshold.item() == pytest.approx(1e-3) for _, layer in qcfs_layers(model))


def test_init_threshold_must_be_positive():
    with pytest.raises(ValueError, match="init_threshold"):
        create_model("vgg_small", num_classes=3, levels=2, init_threshold=0.0)
