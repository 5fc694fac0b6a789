"""get_Teff.py: fan-ins, the T_eff formula, latency, the published-script mode and the CLI."""
import json
import re

import pytest
import torch
from torch import nn

import models
from utils import run_main
from get_Teff import get_args_parser, main
from models.timing import latency_steps, layer_fan_ins, teff, teff_reference

VGG16_LEVELS = "8,4,4,1,4,4,1,1,1,1,1,4,8,8,8"
RESNET18_LEVELS = "4,4,4,1,4,4,4,1,4,1,1,1,1,1,1,1,4"
RESNET18_README_LEVELS = "4,2,4,1,4,2,2,1,4,2,2,1,4,1,1,1,4"
RESNET34_LEVELS = ("16,16,16,8,16,8,16,8,16,8,16,8,16,8,16,8,16,8,16,8,16,8,16,8,16,8,16,8,"
                   "8,8,8,8,8")  # the reference code's ImageNet levels


def run_cli(capsys, argv):
    code = run_main(main, get_args_parser().parse_args(argv))
    out = capsys.readouterr().out
    return code, out


def printed_teff(out):
    values = re.findall(r"^T_eff = (\d+\.\d{4})$", out, flags=re.MULTILINE)
    assert len(values) == 1, out
    return values[0]


def build(arch, levels=1, variant="cifar"):
    with torch.device("meta"):
        return models.create_model(arch, num_classes=10, levels=levels, variant=variant)


# Hand-computed k*k*C_in / in_features of the layer before each activation.
VGG16_CIFAR_FAN_INS = [27, 576, 576, 1152, 1152, 2304, 2304, 2304, 4608, 4608, 4608, 4608, 4608,
                       512, 4096]


def _resnet_fan_ins(stem, blocks_per_stage, widths=(64, 128, 256, 512)):
    fan_ins, channels_in = [stem], widths[0]
    for channels, count in zip(widths, blocks_per_stage, strict=True):
        for _ in range(count):
            # branch act: conv over the block input; post-add act: the branch's second conv
            fan_ins += [9 * channels_in, 9 * channels]
            channels_in = channels
    return fan_ins


@pytest.mark.parametrize("arch,variant,expected", [
    ("vgg16", "cifar", VGG16_CIFAR_FAN_INS),
    ("vgg16", "imagenet", VGG16_CIFAR_FAN_INS[:13] + [512 * 7 * 7, 4096]),
    ("resnet18", "cifar", _resnet_fan_ins(27, (2, 2, 2, 2))),
    ("resnet34", "imagenet", _resnet_fan_ins(147, (3, 4, 6, 3))),
])
def test_layer_fan_ins_hand_computed(arch, variant, expected):
    model = build(arch, variant=variant)
    pairs = layer_fan_ins(model)
    assert [name for name, _ in pairs] == [name for name, _ in models.qcfs_layers(model)]
    assert [fan_in for _, fan_in in pairs] == expected


def test_post_add_activation_uses_branch_conv_not_shortcut():
    # conv3_x.0 has a 1x1 shortcut conv (fan-in 64) registered after residual_function.3
    # (fan-in 9*128); the activation after the addition must get the branch's.
    fan_ins = dict(layer_fan_ins(build("resnet18")))
    assert fan_ins["conv3_x.0.residual_function.2"] == 9 * 64
    assert fan_ins["conv3_x.0.act"] == 9 * 128


# Every built-in architecture, CIFAR variant: adding one to the registry fails until its
# fan-ins are written here by hand.
CIFAR_FAN_INS = {
    "vgg16": VGG16_CIFAR_FAN_INS,
    "resnet18": _resnet_fan_ins(27, (2, 2, 2, 2)),
    "resnet34": _resnet_fan_ins(27, (3, 4, 6, 3)),
    "resnet20": _resnet_fan_ins(27, (3, 3, 3), widths=(16, 32, 64)),
    # three 3x3 convs of 3 -> 16 -> 32 -> 64 channels, then Linear(64 * 4 * 4, 128), (128, 128)
    "vgg_small": [27, 9 * 16, 9 * 32, 64 * 16, 128],
}


def test_every_builtin_architecture_has_hand_computed_fan_ins():
    assert sorted(CIFAR_FAN_INS) == sorted(models.list_models())


@pytest.mark.parametrize("arch", models.list_models())
def test_layer_fan_ins_of_every_builtin_architecture(arch):
    model = build(arch)
    pairs = layer_fan_ins(model)
    assert [name for name, _ in pairs] == [name for name, _ in models.qcfs_layers(model)]
    assert [fan_in for _, fan_in in pairs] == CIFAR_FAN_INS[arch]


def test_teff_single_layer_hand_computed():
    # L = 4, fan_in = 4 -> r = 1/3: 4 (1 + 18/3) / (1 + 4/3) = 12.
    value, rows = teff([4], [4])
    assert value == pytest.approx(12.0, rel=1e-12)  # float rounding only
    assert rows[0]["r"] == pytest.approx(1 / 3, rel=1e-12)
    # L = 1 gives 1 (1 + 3r) / (1 + r); fan_in 4/3 -> r = 1 -> 2.
    assert teff([1], [4 / 3])[0] == pytest.approx(2.0, rel=1e-12)


def test_teff_pairs_strictly():
    with pytest.raises(ValueError):
        teff([4, 4], [27])


@pytest.mark.parametrize("level", [1, 2, 4, 8, 16])
def test_uniform_teff_slightly_above_level_and_tends_to_it(level):
    values = [teff([level] * 3, [fan_in] * 3)[0] for fan_in in (27, 576, 4608, 10**6, 10**9)]
    assert all(v > level for v in values)
    assert values == sorted(values, reverse=True) and len(set(values)) == len(values)
    # the overhead term is ~ (4/3)(4L - 2)/fan_in relative: below 1e-7 L at fan_in 1e9
    assert values[-1] - level < 1e-7 * level * 16


def chain(levels):
    """conv -> QCFS -> conv -> QCFS ... with the given levels (a chain of spiking layers)."""
    layers = []
    for level in levels:
        layers += [nn.Conv2d(3, 3, 1), models.QCFS(level)]
    return nn.Sequential(*layers)


def test_latency_hand_computed():
    # First layer: T_in = 1; spec example T_in = 1, L = 8 needs 7 correction steps.
    total, per_layer = latency_steps(chain([1, 8]))
    assert per_layer == [(1, 1 + 1 - 1 + 1), (1, 1 + 8 - 1 + 8)]
    assert total == 18
    # Uniform L: 2L for the first layer, 3L - 1 for the others.
    total, per_layer = latency_steps(chain([4] * 5))
    assert [steps for _, steps in per_layer] == [8, 11, 11, 11, 11]
    assert total == 52


class TwoBranches(nn.Module):
    """Two parallel spiking paths joined by a concatenation: latency is the longer path."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = models.QCFS(2), models.QCFS(8), models.QCFS(4)
        self.a2 = models.QCFS(1)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        x = self.conv(x)
        short = self.a2(self.conv(self.a(x)))  # 1 -> 2 -> 1 steps
        long = self.b(x)                        # 1 -> 8 steps
        return self.c(torch.cat([short, long], 1))


def test_latency_of_branches_is_the_longest_path():
    total, per_layer = latency_steps(TwoBranches())
    names = [name for name, _ in models.qcfs_layers(TwoBranches())]
    steps = dict(zip(names, per_layer, strict=True))
    assert steps["a"] == (1, 1 + 1 + 2) and steps["a2"] == (2, 2 + 1 + 1)
    assert steps["b"] == (1, 1 + 7 + 8)
    # the concatenation is as long as its longest input (8 steps): c takes T_in = 8
    assert steps["c"] == (8, 8 + 7 + 4)
    assert total == max(4 + 4, 16) + 19


def test_fan_in_after_concatenation_and_max_pool():
    """The largest fan-in among the weighted layers reaching a neuron without passing another
    neuron; 1 when only spiking layers reach it (through a max pool)."""
    model = TwoBranches()
    fan_ins = dict(layer_fan_ins(model))
    assert fan_ins == {"a": 3, "b": 3, "a2": 3, "c": 1}  # c: fed by spiking layers only
    pooled = nn.Sequential(nn.Conv2d(3, 5, 3), models.QCFS(2), nn.MaxPool2d(2),
                           nn.BatchNorm2d(5), models.QCFS(2))
    assert layer_fan_ins(pooled) == [("1", 27), ("4", 1)]


@pytest.mark.parametrize("argv,expected", [
    (["-arch", "vgg16", "-data", "cifar10", "--levels", VGG16_LEVELS], "4.5088"),
    (["-arch", "vgg16", "-data", "cifar10", "--levels", "4"], "4.2024"),
    (["-arch", "resnet18", "-data", "cifar10", "--levels", RESNET18_LEVELS], "2.5873"),
    (["-arch", "resnet18", "-data", "cifar10", "--levels", "4"], "4.1993"),
])
def test_cli_default_golden_values(capsys, argv, expected):
    code, out = run_cli(capsys, argv)
    assert code == 0
    assert printed_teff(out) == expected


@pytest.mark.parametrize("argv,expected,ignored", [
    (["-arch", "resnet18", "-data", "cifar10", "--levels", RESNET18_LEVELS], "3.1362", 7),
    (["-arch", "resnet18", "-data", "cifar10", "--levels", RESNET18_README_LEVELS], "2.6349", 7),
    (["-arch", "vgg16", "-data", "cifar10", "--levels", VGG16_LEVELS], "4.5444", None),
    (["-arch", "resnet34", "-data", "imagenet", "--levels", RESNET34_LEVELS], "12.9370", 15),
])
def test_cli_reference_values(capsys, argv, expected, ignored):
    code, out = run_cli(capsys, argv + ["--reference"])
    assert code == 0
    assert printed_teff(out) == expected
    warning = next(line for line in out.splitlines() if line.startswith("warning:"))
    if ignored:
        assert f"the last {ignored} spiking layers are ignored" in warning
    else:
        assert "constant(s) are dropped" in warning and "all 15 spiking layers" in warning


def test_reference_function_truncates_like_zip():
    levels = [int(v) for v in RESNET18_LEVELS.split(",")]
    value, warning = teff_reference("resnet18", "cifar10", levels)
    # Changing a level the truncation drops cannot change the published number.
    assert teff_reference("resnet18", "cifar10", levels[:10] + [16] * 7)[0] == value
    assert "7" in warning
    # VGG-16's ImageNet FC constants differ from CIFAR's.
    vgg = [int(v) for v in VGG16_LEVELS.split(",")]
    assert teff_reference("vgg16", "imagenet", vgg)[0] != teff_reference("vgg16", "cifar10", vgg)[0]
    with pytest.raises(ValueError):
        teff_reference("vgg_small", "digits", [1] * 5)


def test_wrong_length_levels_exit_2(capsys):
    assert run_main(main, get_args_parser().parse_args(["-arch", "vgg16", "--levels",
                                                        "4,4,4"])) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "15" in err and "got 3" in err
    assert "Traceback" not in err


def test_reference_readme_spellings_parse_and_no_abbreviations(capsys):
    args = get_args_parser().parse_args(["-data=cifar10", "-arch=vgg16", "--levels=4"])
    assert (args.dataset, args.arch, args.levels) == ("cifar10", "vgg16", "4")
    with pytest.raises(SystemExit) as info:
        get_args_parser().parse_args(["-arch", "vgg16", "--lev", "4"])
    assert info.value.code == 2


def _save_checkpoint(path, arch, levels, dataset="digits", variant="cifar"):
    model = models.create_model(arch, num_classes=10, levels=levels, variant=variant)
    torch.save({"state_dict": model.state_dict(),
                "model_args": {"arch": arch, "variant": variant, "num_classes": 10,
                               "levels": models.get_levels(model), "dataset": dataset}}, path)


def test_cli_reads_levels_from_checkpoint_and_writes_json(tmp_path, capsys):
    directory = tmp_path / "digits-checkpoints"
    directory.mkdir()
    levels = [1, 2, 4, 8, 16]
    _save_checkpoint(directory / "myid.pth", "vgg_small", levels)
    out_json = tmp_path / "teff.json"
    code, out = run_cli(capsys, ["-data", "digits", "--id", "myid",
                                 "--checkpoint-dir", str(directory), "--json", str(out_json)])
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["levels"] == levels and result["arch"] == "vgg_small"
    fan_ins = [fan_in for _, fan_in in layer_fan_ins(build("vgg_small"))]
    assert result["T_eff"] == pytest.approx(teff(levels, fan_ins)[0], rel=1e-12)
    assert printed_teff(out) == f"{result['T_eff']:.4f}"
    assert result["latency_steps"] == latency_steps(build("vgg_small", levels))[0]
    names = [name for name, _ in layer_fan_ins(build("vgg_small"))]
    assert [row["name"] for row in result["layers"]] == names
    # The same file through --checkpoint, and the default directory through the cwd.
    code, _ = run_cli(capsys, ["--checkpoint", str(directory / "myid.pth")])
    assert code == 0


def test_cli_checkpoint_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "digits-checkpoints"
    directory.mkdir()
    _save_checkpoint(directory / "run_a.pth", "vgg_small", 2)
    _save_checkpoint(directory / "run_a_best.pth", "vgg_small", 2)
    (directory / "garbage.pth").write_bytes(b"not a checkpoint")
    torch.save({"conv.weight": torch.zeros(1)}, directory / "bare.pth")

    def fails(argv, *needles):
        assert run_main(main, get_args_parser().parse_args(argv)) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        for needle in needles:
            assert needle in err, err
        return err

    err = fails(["-data", "digits", "--id", "missing"], "bare, garbage, run_a")
    assert "run_a_best" not in err
    fails(["-data", "digits", "--id", "garbage"], "not a readable PyTorch checkpoint")
    fails(["-data", "digits", "--id", "bare"], "model_args")
    fails(["-data", "digits", "-arch", "vgg16", "--id", "run_a"], "vgg_small", "vgg16")
    fails(["--id", "run_a"], "-data")
    fails(["-arch", "vgg_small", "--levels", "4", "--reference"], "vgg16, resnet18 and resnet34")
    fails(["-arch", "vgg_small", "--levels", "4,x"], "comma-separated")
    fails(["-arch", "vgg_small", "--levels", "0"], "level")
    # The default directory {dataset}-checkpoints, relative to the working directory.
    code, _ = run_cli(capsys, ["-data", "digits", "--id", "run_a"])
    assert code == 0

