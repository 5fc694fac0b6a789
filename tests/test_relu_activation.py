"""--activation relu: the same architectures with ReLU, trained and evaluated as ANNs."""
import json

import pytest
import torch
from torch import nn

import get_stats
import get_Teff
import models
from checkpoint import qcfs_from_relu
from conftest import main_test, main_train, run_script
from data import get_dataset
from level_search import calibration_loader
from threshold_init import data_thresholds_
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


@pytest.mark.slow
def test_relu_training_writes_a_relu_checkpoint(relu_run):
    checkpoint = torch.load(relu_run / "relu.pth", weights_only=True)
    assert checkpoint["model_args"]["activation"] == "relu"
    assert checkpoint["model_args"]["levels"] == []
    assert not any(k.endswith("threshold") for k in checkpoint["state_dict"])
    assert "ReLU activations (no levels)" in (relu_run / "relu.log").read_text()


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_resuming_with_the_other_activation_is_refused(relu_run, capsys):
    status = run_script(main_train, ["-data", "digits", "-arch", "vgg_small", "-epochs", "3",
                                     "--id", "relu", "--resume", "auto", "--checkpoint-dir",
                                     str(relu_run)])
    assert status == 2
    assert_one_line_error(capsys, "holds activation 'relu', not 'qcfs'", "pass --activation relu")


# --- a QCFS network from a ReLU network's weights ------------------------------------------

def parameters_but_thresholds(state_dict, model):
    names = {name for name, _ in model.named_parameters() if not name.endswith("threshold")}
    return {k: v for k, v in state_dict.items() if k in names}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["own", "plain", "under model"])
def test_qcfs_run_starts_from_a_relu_checkpoint(relu_run, tmp_path, layout):
    """Learning rate 0: the QCFS run's parameters are the ReLU network's, its thresholds the
    data's (BatchNorm running statistics still move in the training epoch)."""
    relu = torch.load(relu_run / "relu.pth", weights_only=True)
    path = relu_run / "relu.pth"
    if layout != "own":
        path = tmp_path / "weights.pth"
        torch.save(relu["state_dict"] if layout == "plain" else {"model": relu["state_dict"]},
                   path)
    assert run_script(main_train, [
        "-data", "digits", "-arch", "vgg_small", "-epochs", "1", "--id", "q", "-b", "64",
        "-lr", "0", "--levels", "3", "--init-threshold", "auto:99", "--calib-images", "64",
        "--initial-checkpoint", str(path), "-j", "0", "--no-progress",
        "--checkpoint-dir", str(tmp_path)]) == 0
    qcfs = torch.load(tmp_path / "q.pth", weights_only=True)
    model = models.create_model("vgg_small", num_classes=10, levels=3)
    got = parameters_but_thresholds(qcfs["state_dict"], model)
    assert got.keys() == parameters_but_thresholds(relu["state_dict"], model).keys()
    for key, value in got.items():
        assert torch.equal(value, relu["state_dict"][key]), key
    assert qcfs["model_args"]["activation"] == "qcfs" and qcfs["model_args"]["levels"] == [3] * 5
    thresholds = [float(v) for k, v in qcfs["state_dict"].items() if k.endswith("threshold")]
    log = (tmp_path / "q.log").read_text()
    assert "initial weights from the ReLU network" in log
    assert "the 99th percentile of each layer's positive inputs on 64 training images" in log
    assert len(set(thresholds)) == 5 and all(t != 4.0 for t in thresholds)


@pytest.mark.parametrize("arch", ["resnet18", "vgg16", "resnet20"])
def test_relu_checkpoints_of_the_paper_architectures_load(arch):
    """What --activation relu writes, loaded into the QCFS network of the same arch."""
    relu = models.create_model(arch, num_classes=10, levels=None, activation="relu")
    checkpoint = {"model_args": models.model_args_of(relu, arch, "cifar", 10,
                                                     activation="relu"),
                  "state_dict": relu.state_dict()}
    model, model_args = qcfs_from_relu(checkpoint, "relu.pth", arch, "cifar10", "cifar", 10, 4,
                                       2.5, 0.0)
    own = model.state_dict()
    for key, value in relu.state_dict().items():
        assert torch.equal(own[key], value), key
    assert {float(m.threshold.detach()) for _, m in models.qcfs_layers(model)} == {2.5}
    assert model_args["levels"] == [4] * len(models.qcfs_layers(model))


@pytest.mark.slow
def test_a_torchvision_state_dict_trains_and_evaluates(tmp_path):
    import torchvision
    torch.manual_seed(0)
    path = tmp_path / "torchvision-resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    assert run_script(main_train, [
        "-data", "digits", "-arch", "tv:resnet18", "-epochs", "1", "--id", "tv", "-b", "128",
        "--levels", "2", "--init-threshold", "auto", "--calib-images", "32",
        "--initial-checkpoint", str(path), "-j", "0", "--no-progress",
        "--checkpoint-dir", str(tmp_path)]) == 0
    output = tmp_path / "tv.json"
    assert run_script(main_test, ["-data", "digits", "--id", "tv", "--checkpoint-dir",
                                  str(tmp_path), "--num-images", "8", "--sim", "counts",
                                  "--dtype", "float64", "-j", "0", "--no-progress",
                                  "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["agreement"] == 100.0
    assert set(result["differing_neurons"].values()) == {0} and len(result["differing_neurons"]) == 17


@pytest.mark.slow
@pytest.mark.parametrize("change, fragments", [
    ("drop", ["missing keys classifier.7.bias", "unexpected keys none"]),
    ("extra", ["missing keys none", "unexpected keys extra.weight"]),
    ("shape", ["shapes do not match", "classifier.7.bias (3,) vs (10,)"])])
def test_wrong_keys_of_a_relu_state_dict_are_one_line(relu_run, tmp_path, capsys, change,
                                                      fragments):
    weights = dict(torch.load(relu_run / "relu.pth", weights_only=True)["state_dict"])
    if change == "drop":
        weights.pop("classifier.7.bias")
    elif change == "extra":
        weights["extra.weight"] = torch.zeros(1)
    else:
        weights["classifier.7.bias"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(weights, path)
    out = tmp_path / "out"
    assert run_script(main_train, [
        "-data", "digits", "-arch", "vgg_small", "-epochs", "1", "--id", "q",
        "--initial-checkpoint", str(path), "--checkpoint-dir", str(out)]) == 2
    assert_one_line_error(capsys, f"{path} is not a ReLU vgg_small with 10 classes",
                          *fragments)
    assert not (out / "q.pth").exists()


@pytest.mark.slow
def test_conversion_without_training_reports_relu_qcfs_and_snn(relu_run, tmp_path):
    relu_only, converted = tmp_path / "relu.json", tmp_path / "converted.json"
    common = ["-data", "digits", "--id", "relu", "--checkpoint-dir", str(relu_run), "-j", "0",
              "--no-progress", "--dtype", "float64", "--sim", "counts"]
    assert run_script(main_test, common + ["--output", str(relu_only)]) == 0
    assert run_script(main_test, common + [
        "--levels", "3", "--init-threshold", "auto:99", "--calib-images", "64",
        "--output", str(converted)]) == 0
    result = json.loads(converted.read_text())
    assert result["relu_top1"] == json.loads(relu_only.read_text())["ann_top1"]
    assert result["agreement"] == 100.0 and set(result["differing_neurons"].values()) == {0}
    assert result["levels"] == [3] * 5 and result["calibration_images"] == 64
    assert result["timing"]["T_eff"] == pytest.approx(
        models.timing.teff([3] * 5, models.timing.layer_fan_ins(
            models.create_model("vgg_small", num_classes=10, levels=3)))[0])
    # the thresholds are those a QCFS run from the same weights starts with
    model = models.create_model("vgg_small", num_classes=10, levels=3)
    weights = torch.load(relu_run / "relu.pth", weights_only=True)["state_dict"]
    model.load_state_dict(weights, strict=False)
    train = get_dataset("digits", None, "train", augment=False)
    expected = data_thresholds_(model.double(), calibration_loader(train, 64, 64), 99.0)
    assert result["thresholds"] == pytest.approx({n: t for n, t, _ in expected}, rel=1e-12)


@pytest.mark.slow
def test_init_threshold_needs_a_relu_checkpoint_and_levels(relu_run, capsys):
    assert run_script(main_test, ["-data", "digits", "--id", "relu", "--checkpoint-dir",
                                  str(relu_run), "--init-threshold", "auto"]) == 2
    assert_one_line_error(capsys, "--init-threshold", "converted with --levels")


# --- torchvision's pretrained weights: --pretrained ------------------------------------------

def test_pretrained_without_the_file_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"

    def offline(url, dst, *args, **kwargs):  # what an unreachable server gives
        raise OSError("<urlopen error [Errno -2] Name or service not known>")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert run_script(main_train, [
        "-data", "digits", "-arch", "tv:resnet18", "-epochs", "1", "--pretrained", "--id", "p",
        "--checkpoint-dir", str(tmp_path / "runs")]) == 2
    assert_one_line_error(capsys, "ResNet18_Weights.IMAGENET1K_V1 could not be loaded",
                          f"put resnet18-f37072fd.pth (from https://download.pytorch.org/"
                          f"models/resnet18-f37072fd.pth) into {folder}")
    assert not (tmp_path / "runs" / "p.pth").exists()


@pytest.mark.slow
def test_pretrained_from_the_cache_replaces_the_classifier(tmp_path, monkeypatch):
    """A state dict placed in torch hub's cache under the expected name is used as it is
    (no download, no hash check): the classifier of 1000 classes becomes one of 10."""
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    weights = torchvision.models.resnet18(num_classes=1000).state_dict()
    torch.save(weights, folder / "resnet18-f37072fd.pth")
    assert run_script(main_train, [
        "-data", "digits", "-arch", "tv:resnet18", "-epochs", "1", "-b", "128", "-lr", "0",
        "--pretrained", "IMAGENET1K_V1", "--levels", "2", "--id", "p", "-j", "0",
        "--no-progress", "--checkpoint-dir", str(tmp_path)]) == 0
    state = torch.load(tmp_path / "p.pth", weights_only=True)["state_dict"]
    assert state["fc.weight"].shape == (10, 512)
    parameters = {k for k, _ in models.create_model("tv:resnet18", num_classes=10,
                                                    levels=2).named_parameters()}
    for key in parameters - {"fc.weight", "fc.bias"}:
        if not key.endswith("threshold"):
            assert torch.equal(state[key], weights[key]), key  # learning rate 0
    log = (tmp_path / "p.log").read_text()
    assert ("initial weights: torchvision's ResNet18_Weights.IMAGENET1K_V1; classifier "
            "replaced (1000 -> 10 classes: fc.weight, fc.bias freshly initialised)") in log


@pytest.mark.parametrize("argv, fragment", [
    (["-arch", "vgg_small", "--pretrained"], "they need -arch tv:NAME, not vgg_small"),
    (["-arch", "tv:resnet18", "--pretrained", "NOPE"], "has no pretrained weights 'NOPE'"),
    (["-arch", "tv:resnet18", "--pretrained", "--activation", "relu"], "drop --activation")])
def test_pretrained_refusals(tmp_path, capsys, argv, fragment):
    assert run_script(main_train, ["-data", "digits", "-epochs", "1", "--checkpoint-dir",
                                   str(tmp_path)] + argv) == 2
    assert_one_line_error(capsys, fragment)
