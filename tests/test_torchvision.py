"""Any ReLU CNN, exactly: torchvision architectures made QCFS networks and converted through
their graphs, against the ANN they came from (float64, random live weights, mixed levels)."""
import pytest
import torch

import models
from helpers import ann_levels, calibrate_thresholds_, few_long_levels, randomize_

# The acceptance set of issue 13: residual (basic and bottleneck), plain with BatchNorm and max
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
    logits, levels = ann_levels(model, x)
    assert set(models.get_levels(model)) >= {1, 2, 3, 4}  # mixed levels, really
    # Alive: each layer has 5-95 % non-zero outputs and the outputs depend on the image.
    for layer, level in levels.items():
        active = float((level > 0).double().mean())
        assert 0.05 <= active <= 0.95, f"{layer} is {active:.1%} active: not a live network"
    if name == "squeezenet1_1":
        # its logits are an average of its last spiking layer (no output bias to centre):
        # both images may pick one class, but the logits must differ between them
        assert not torch.allclose(logits[0], logits[1])
    else:
        assert len(set(logits.argmax(1).tolist())) >= 2, "the network predicts one class"
    scale = float(logits.abs().max())
    for sim in ("step", "counts"):
        snn = models.convert_to_snn(model, sim=sim)
        snn_logits, stats = snn.forward_with_stats(x, keep_counts=True)
        assert [s.name for s in stats] == list(levels), sim
        for s in stats:
            assert s.counts.dtype == torch.int32
            mismatched = int((s.counts.to(torch.int64) != levels[s.name]).sum())
            assert mismatched == 0, f"{sim} {s.name}: {mismatched} of {s.counts.numel()} differ"
        # float64: the SNN sums per-step currents where the ANN applies each layer once, so
        # the logits agree up to accumulated rounding (~1e-15 relative), far inside 1e-9.
        torch.testing.assert_close(snn_logits, logits, rtol=1e-9, atol=1e-9 * scale)
