"""Any ReLU CNN, exactly: torchvision architectures made QCFS networks and converted through
their graphs, against the ANN they came from (float64, random live weights, mixed levels)."""
import pytest
import torch

import models
from helpers import assert_snn_exact, calibrate_thresholds_, few_long_levels, randomize_

pytestmark = pytest.mark.slow

# The acceptance set: residual (basic and bottleneck), plain with BatchNorm and max
# pools, depthwise with ReLU6 and residual sums fed to convolutions, dense concatenation with
# pre-activation BatchNorm, inception branches (functional ReLUs, max pools of
# concatenations), fire modules ending in a spiking layer and a pool (no linear layer).
ACCEPTANCE = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "densenet121", "googlenet",
              "squeezenet1_1"]


def live_torchvision(name, seed=0, images=2, size=64):
    generator = torch.Generator().manual_seed(seed)
    model = models.create_model(f"tv:{name}", num_classes=10, levels=1)
    models.set_levels(model, few_long_levels(len(models.qcfs_layers(model)), seed))
    model = randomize_(model, generator).double()
    x = torch.randn(images, 3, size, size, generator=generator, dtype=torch.float64)
    calibrate_thresholds_(model, x)
    return model, x


@pytest.mark.parametrize("name", ACCEPTANCE)
def test_torchvision_snn_equals_ann_float64(name):
    model, x = live_torchvision(name)
    assert set(models.get_levels(model)) >= {1, 2, 3, 4}  # mixed levels, really
    # squeezenet's logits are an average of its last spiking layer (no output bias to
    # centre): both images may pick one class, but the logits must differ between them
    assert_snn_exact(model, x, min_classes=1 if name == "squeezenet1_1" else 2)
