"""Fidelity to the reference code: VGG structure and initialisation, old checkpoints, Cutout
and the training transforms, and reference-layout ImageNet checkpoints."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import main_test
import models
from checkpoint import model_from_checkpoint
from conftest import run_script
from data import Cutout, cifar_transforms, imagenet_transforms
from helpers import live_model
from test_convert import KEYS_JSON


def reference_vgg16_sequence(num_classes=10):
    """The reference VGG-16 (CIFAR) as (type, dropout p) per module, in order: every
    activation followed by a Dropout of p = 0, a 2x2 average pool closing each stage."""
    stages = []
    for convs in (2, 2, 3, 3, 3):
        stages.append([("Conv2d", None), ("BatchNorm2d", None), ("QCFS", None),
                       ("Dropout", 0.0)] * convs + [("AvgPool2d", None)])
    classifier = [("Flatten", None), ("Linear", None), ("QCFS", None), ("Dropout", 0.0),
                  ("Linear", None), ("QCFS", None), ("Dropout", 0.0), ("Linear", None)]
    return stages, classifier


def sequence(module):
    return [(type(m).__name__, m.p if isinstance(m, nn.Dropout) else None) for m in module]


def test_vgg16_structure_matches_the_reference():
    model = models.create_model("vgg16", num_classes=10, levels=4)
    stages, classifier = reference_vgg16_sequence()
    for index, expected in enumerate(stages, start=1):
        assert sequence(getattr(model, f"layer{index}")) == expected, index
    assert sequence(model.classifier) == classifier
    assert isinstance(model.pool, nn.Identity)
    # the reference's parameter names, one to one
    layout = json.loads(KEYS_JSON.read_text())["vgg16"]
    translated = {k.replace(".thresh", ".threshold"): v for k, v in layout.items()}
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == translated
    with_dropout = models.create_model("vgg16", num_classes=10, levels=4, dropout=0.3)
    assert {m.p for m in with_dropout.modules() if isinstance(m, nn.Dropout)} == {0.3}
    assert sum(isinstance(m, nn.Dropout) for m in with_dropout.modules()) == 15


def test_vgg16_initialisation_is_kaiming_fan_out():
    torch.manual_seed(0)
    model = models.create_model("vgg16", num_classes=10, levels=4)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            expected = math.sqrt(2.0 / fan_out)
            # the smallest conv has 1,728 weights: the sample std's relative standard error
            # is 1/sqrt(2n) = 1.7 %, so 8 % is more than 4.5 standard errors
            assert float(module.weight.detach().std()) == pytest.approx(expected, rel=0.08), name
            assert float(module.weight.detach().mean()) == pytest.approx(0.0, abs=4 * expected /
                                                                math.sqrt(module.weight.numel()))
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        elif isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        elif isinstance(module, nn.Linear):
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    # PyTorch's default init (std sqrt(1 / (3 fan_in))) would fail: 0.111 instead of 0.059 for
    # the first conv, 0.0085 instead of 0.0208 for the 512-channel ones


def test_old_vgg_checkpoints_rebuild_with_their_dropout(tmp_path):
    """A checkpoint written before model_args recorded the dropout rebuilds with Dropout 0.1
    between the convolutions of a stage and 0.5 in the classifier, so it evaluates and
    resumes as before."""
    old = models.create_model("vgg16", num_classes=10, levels=4, dropout=None)
    probabilities = [m.p for m in old.modules() if isinstance(m, nn.Dropout)]
    assert probabilities == [0.1] * 8 + [0.5, 0.5]  # 8 of 13 conv activations, none at a pool
    assert sequence(old.layer1) == [("Conv2d", None), ("BatchNorm2d", None), ("QCFS", None),
                                    ("Dropout", 0.1), ("Conv2d", None), ("BatchNorm2d", None),
                                    ("QCFS", None), ("AvgPool2d", None)]
    model_args = {"arch": "vgg16", "variant": "cifar", "num_classes": 10, "levels": [4] * 15,
                  "dataset": "digits"}  # as written then: no "dropout"
    checkpoint = {"format_version": 1, "model_args": model_args, "state_dict": old.state_dict()}
    rebuilt, rebuilt_args = model_from_checkpoint(checkpoint, tmp_path / "old.pth")
    assert [m.p for m in rebuilt.modules() if isinstance(m, nn.Dropout)] == probabilities
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), old.eval()(x))
    torch.manual_seed(5)
    trained_old = old.train()(x)
    torch.manual_seed(5)
    assert torch.equal(rebuilt.train()(x), trained_old)  # the same dropout masks: resumes alike
    # a checkpoint of this version records its dropout
    new_args = models.model_args_of(models.create_model("vgg16", num_classes=10, levels=4),
                                    "vgg16", "cifar", 10)
    assert new_args["dropout"] == 0.0


def test_dropout_is_refused_where_there_is_none():
    with pytest.raises(ValueError, match="resnet18 has no dropout"):
        models.create_model("resnet18", num_classes=10, levels=4, dropout=0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        models.create_model("vgg16", num_classes=10, levels=4, dropout=1.5)


def test_cutout_centres_anywhere_and_clips_at_the_border():
    torch.manual_seed(0)
    cutout = Cutout(16)
    sizes, centres, clipped = set(), set(), 0
    for _ in range(4000):
        image = cutout(torch.ones(3, 32, 32))
        erased = image[0] == 0
        assert torch.equal(erased, (image == 0).all(0))  # every channel erased alike
        rows = torch.nonzero(erased.any(1)).flatten()
        cols = torch.nonzero(erased.any(0)).flatten()
        if len(rows) == 0:
            continue
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), \
            int(cols[-1]) + 1
        assert erased[top:bottom, left:right].all()  # one rectangle
        assert int(erased.sum()) == (bottom - top) * (right - left)
        assert bottom - top <= 16 and right - left <= 16  # never larger than 16x16
        sizes.add((bottom - top, right - left))
        if (bottom - top, right - left) != (16, 16):
            clipped += 1
            assert top == 0 or bottom == 32 or left == 0 or right == 32  # clipped by a border
        else:
            centres.add((top + 8, left + 8))
    # the centre is uniform over all 32 x 32 pixels; a square keeps its 16 rows only for the
    # 17 centre rows 8..24 (same for columns): 1 - (17/32)^2 = 71.8 % are clipped (the binomial
    # standard deviation over 4,000 draws is 0.7 points; 3 points is more than 4 of them)
    assert abs(clipped / 4000 - (1 - (17 / 32) ** 2)) < 0.03
    assert {(16, 16), (8, 8), (8, 16), (16, 8)} <= sizes  # corners and edges as well
    assert min(c[0] for c in centres) == 8 and max(c[0] for c in centres) == 24


def test_training_transforms_follow_the_reference():
    from torchvision import transforms as T
    cifar = cifar_transforms("cifar10", train=True).transforms
    assert [type(t).__name__ for t in cifar] == ["RandomCrop", "RandomHorizontalFlip",
                                                 "AutoAugment", "ToTensor", "Normalize",
                                                 "Cutout"]
    assert cifar[2].policy == T.AutoAugmentPolicy.CIFAR10 and cifar[2].fill == [128] * 3
    imagenet = imagenet_transforms(train=True, image_size=64).transforms
    assert [type(t).__name__ for t in imagenet] == ["RandomResizedCrop", "RandomHorizontalFlip",
                                                    "ColorJitter", "ToTensor", "Normalize"]
    jitter = imagenet[2]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == \
        ((0.8, 1.2), (0.8, 1.2), (0.8, 1.2), (-0.1, 0.1))


def imagenet_reference_checkpoint(path, levels):
    """A live ResNet-34 saved as the reference ImageNet script saves it: the CIFAR stem, 1000
    classes, ``module.`` prefixes (DataParallel), thresholds named ``thresh``, under
    ``state_dict``; its keys are the reference CIFAR layout's with fc widened to 1000."""
    model, x = live_model("resnet34", levels, num_classes=1000, images=2, seed=3, size=32)
    state = {"module." + k.replace(".threshold", ".thresh"): v.float()
             for k, v in model.state_dict().items()}
    layout = json.loads(KEYS_JSON.read_text())["resnet34"]
    layout.update({"fc.weight": [1000, 512], "fc.bias": [1000]})
    assert {k[len("module."):]: list(v.shape) for k, v in state.items()} == layout
    torch.save({"state_dict": state, "epoch": 90}, path)


@pytest.mark.slow
def test_reference_imagenet_resnet34_checkpoint_converts_exactly(tmp_path):
    root = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    for index in range(1000):  # one tiny image per class
        folder = root / "val" / f"n{index:08d}"
        folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "0.png")
    mixed = [2, 1] * 16 + [2]  # mixed levels at a fraction of the ImageNet list's cost
    levels = ",".join(map(str, mixed))
    path = tmp_path / "resnet34_reference.pth"
    imagenet_reference_checkpoint(path, mixed)
    output = tmp_path / "result.json"
    assert run_script(main_test, [
        "-data", "imagenet", "--data-root", str(root), "--checkpoint", str(path),
        "-arch", "resnet34", "--levels", levels, "--image-size", "32", "--dtype", "float64",
        "--num-images", "1", "-j", "0", "--no-progress", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["num_images"] == 1 and result["agreement"] == 100.0
    assert result["levels"] == mixed
    assert result["ann_top1"] == result["snn_top1"]
    assert all(v == 1.0 for v in result["layer_count_agreement"].values())
    assert len(result["layer_count_agreement"]) == 33


def test_reference_checkpoints_that_fit_no_variant_are_refused(tmp_path, capsys):
    from helpers import assert_one_line_error
    state = models.create_model("resnet18", num_classes=10, levels=4).state_dict()
    state = {k.replace(".threshold", ".thresh"): v for k, v in state.items()}
    state["conv1.0.weight"] = torch.zeros(64, 3, 5, 5)  # neither stem
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    assert run_script(main_test, ["-data", "cifar10", "--checkpoint", str(path), "-arch",
                                  "resnet18", "--levels", "4", "-j", "0", "--no-progress"]) == 2
    assert_one_line_error(capsys, "fits neither variant", "conv1.0.weight")
