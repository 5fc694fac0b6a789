"""Segmentation networks, exactly: torchvision's FCN and DeepLabV3 (ResNet-50 backbones, with
and without the auxiliary head: a dict output, bilinear upsampling to the input's size, an
image-pooling branch upsampled from 1x1, dilated convolutions) and a small U-Net (transposed
convolutions, skip concatenations of trains of different lengths, max pooling), made QCFS
networks by models.qcfsify, alive, in float64: on both simulation paths every spike count
equals its ANN level and the per-pixel logits agree with the ANN's."""
import pytest
import torch
import torchvision
from torch import nn

import models
from helpers import UNet, ann_levels, assert_snn_exact, make_live

SEGMENTATION = [("fcn_resnet50", False), ("fcn_resnet50", True),
                ("deeplabv3_resnet50", False), ("deeplabv3_resnet50", True)]
SIZE = 64


def live_segmentation(name, aux_loss, size=SIZE, classes=5):
    net = getattr(torchvision.models.segmentation, name)(
        weights=None, weights_backbone=None, num_classes=classes, aux_loss=aux_loss)
    model = models.qcfsify(net, 2, input_shape=(3, size, size))
    # levels 2-4: every layer can show two or more nonzero levels
    models.set_levels(model, [2 + i % 3 for i in range(len(models.qcfs_layers(model)))])
    return make_live(model, (3, size, size), images=2)


def assert_two_nonzero_levels(levels):
    """Every QCFS layer has neurons at two or more nonzero levels on the batch."""
    for name, level in levels.items():
        nonzero = set(level.unique().tolist()) - {0}
        assert len(nonzero) >= 2, f"{name}: nonzero levels {sorted(nonzero)}"


def relu_calls(net):
    """ReLU call sites of the original network, counted on its own fx trace."""
    graph = torch.fx.Tracer().trace(net)
    return sum(1 for n in graph.nodes if n.op == "call_module" and
               isinstance(net.get_submodule(n.target), nn.ReLU) or
               n.op == "call_function" and n.target is torch.nn.functional.relu)


@pytest.mark.slow
@pytest.mark.parametrize("name, aux_loss", SEGMENTATION)
def test_torchvision_segmentation_is_exact(name, aux_loss):
    model, x = live_segmentation(name, aux_loss)
    net = getattr(torchvision.models.segmentation, name)(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=aux_loss)
    assert len(models.qcfs_layers(model)) == relu_calls(net)
    _, levels = ann_levels(model, x)
    assert_two_nonzero_levels(levels)
    runs = assert_snn_exact(model, x, min_classes=1)
    for sim in ("step", "counts"):
        out = runs[sim][0]
        assert list(out) == (["out", "aux"] if aux_loss else ["out"])
        assert out["out"].shape == (2, 5, SIZE, SIZE)


def test_unet_is_exact():
    model = models.qcfsify(UNet(), [2, 3, 4, 5, 2, 3, 4, 2, 5, 3])
    model, x = make_live(model, (3, 16, 16), images=3)
    _, levels = ann_levels(model, x)
    assert_two_nonzero_levels(levels)
    runs = assert_snn_exact(model, x, min_classes=1)
    assert runs["step"][0].shape == (3, 3, 16, 16)
    fates = {name: fate for name, _, fate in models.convert_to_snn(model).fates()}
    assert fates["pool"] == "max of front-loaded bursts, every step"
    assert fates["up2"] == "every step, bias once per window"
    assert fates["cat"] == "concatenated, shorter trains zero-padded at the end"
