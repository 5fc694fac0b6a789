"""--activation relu: the same architectures with ReLU, trained and evaluated as ANNs."""
import json

import pytest
import torch
from torch import nn

import get_stats
import get_Teff
import models
from conftest import main_test, main_train, run_script
from helpers import assert_one_line_error


@pytest.mark.parametrize("arch", models.list_models() + ["tv:resnet18"])
def test_relu_network_has_the_qcfs_networks_weights_and_no_qcfs_layer(arch):
    relu = models.create_model(arch, num_classes=10, levels=None, activation="relu")
    qcfs = models.create_model(arch, num_classes=10, levels=2)
    assert models.qcfs_layers(relu) == []
    # every parameter of the QCFS network but its thresholds, with the same name and shape
    expected = {k: v.shape for k, v in qcfs.state_dict().items() if not k.endswith("threshold")}
    assert {k: v.shape for k, v in relu.state_dict().items()} == expected
    relus = sum(isinstance(m, nn.ReLU) for m in relu.modules())
    if not arch.startswith("tv:"):  # one nn.ReLU module per QCFS layer
        assert relus == len(models.qcfs_layers(qcfs))


def test_relu_network_refuses_levels():
    with pytest.raises(ValueError, match="a ReLU network has no levels; got levels 4"):
        models.create_model("vgg_small", num_classes=10, levels=4, activation="relu")
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        models.create_model("vgg_small", num_classes=10, levels=4, activation="gelu")


@pytest.fixture(scope="module")
def relu_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("relu")
    assert run_script(main_train, [
        "-data", "digits", "-arch", "vgg_small", "-epochs", "2", "--id", "relu", "-b", "64",
        "--activation", "relu", "-j", "0", "--no-progress", "--checkpoint-dir",
        str(folder)]) == 0
    return folder


def test_relu_training_writes_a_relu_checkpoint(relu_run):
    checkpoint = torch.load(relu_run / "relu.pth", weights_only=True)
    assert checkpoint["model_args"]["activation"] == "relu"
    assert checkpoint["model_args"]["levels"] == []
    assert not any(k.endswith("threshold") for k in checkpoint["state_dict"])
    assert "ReLU activations (no levels)" in (relu_run / "relu.log").read_text()


def test_relu_checkpoint_is_evaluated_as_an_ann_only(relu_run, tmp_path):
    output = tmp_path / "relu.json"
    assert run_script(main_test, ["-data", "digits", "--id", "relu", "--checkpoint-dir",
                                  str(relu_run), "-j", "0", "--no-progress", "--output",
                                  str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["activation"] == "relu" and result["snn_top1"] is None
    assert result["agreement"] is None and result["num_images"] == 360
    # the ANN's accuracy, recomputed here from the checkpoint
    model = models.create_model("vgg_small", num_classes=10, levels=None, activation="relu")
    model.load_state_dict(torch.load(relu_run / "relu.pth", weights_only=True)["state_dict"])
    from data import get_dataset
    test_set = get_dataset("digits", ".", "test")
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    labels = torch.tensor(test_set.targets)
    with torch.no_grad():
        correct = int((model.eval()(images).argmax(1) == labels).sum())
    assert result["ann_top1"] == pytest.approx(100.0 * correct / 360, abs=1e-9)


@pytest.mark.parametrize("module, argv, fragments", [
    (main_test, ["--mode", "snn"], ("ReLU network", "--mode snn")),
    (main_test, ["--report"], ("ReLU network", "--report")),
    (get_Teff, [], ("ReLU network", "no T_eff")),
    (get_stats, [], ("ReLU network", "no QCFS layers")),
])
def test_spiking_tools_refuse_a_relu_checkpoint(relu_run, capsys, module, argv, fragments):
    status = run_script(module, ["-data", "digits", "--id", "relu", "--checkpoint-dir",
                                 str(relu_run), *argv])
    assert status == 2
    assert_one_line_error(capsys, *fragments)


@pytest.mark.parametrize("argv, fragment", [
    (["--levels", "4"], "drop --levels / -L"),
    (["-L", "2"], "drop --levels / -L"),
    (["--adaptive", "--phase1-epochs", "1"], "drop --adaptive"),
])
def test_relu_training_refuses_level_flags(tmp_path, capsys, argv, fragment):
    status = run_script(main_train, ["-data", "digits", "-arch", "vgg_small", "-epochs", "2",
                                     "--activation", "relu", "--checkpoint-dir", str(tmp_path),
                                     *argv])
    assert status == 2
    assert_one_line_error(capsys, "--activation relu", fragment)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_resuming_with_the_other_activation_is_refused(relu_run, capsys):
    status = run_script(main_train, ["-data", "digits", "-arch", "vgg_small", "-epochs", "3",
                                     "--id", "relu", "--resume", "auto", "--checkpoint-dir",
                                     str(relu_run)])
    assert status == 2
    assert_one_line_error(capsys, "holds a relu network", "--activation relu")
