"""main_train.py and main_test.py run in-process on real-format data."""
import json

import pytest
import torch

import main_test
import main_train
from config import TrainConfig
from conftest import evaluate_digits_run, run_script
from test_convert import REFERENCE_LEVELS, reference_state_dict
from helpers import assert_one_line_error


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_digits_checkpoint_is_self_describing(digits_run):
    folder, run_id = digits_run
    checkpoint = torch.load(folder / f"{run_id}.pth", weights_only=True)
    assert checkpoint["model_args"] == {"arch": "vgg_small", "variant": "cifar",
                                        "num_classes": 10, "levels": [4, 2, 8, 4, 3],
                                        "dataset": "digits", "dropout": 0.0,
                                        "activation": "qcfs", "image_size": 32}
    assert checkpoint["epoch"] == 3 and checkpoint["format_version"] == 2
    assert {"optimizer", "scheduler", "config", "best_acc1", "test_acc1", "test_images",
            "partial_epoch", "adaptive"} <= set(checkpoint)
    config = TrainConfig.from_dict(checkpoint["config"])
    assert (config.epochs, config.batch_size, config.lr, config.run_id) == (3, 32, 0.1, run_id)
    assert config.as_dict() == checkpoint["config"]  # plain values, read back unchanged
    assert checkpoint["partial_epoch"] is None and checkpoint["test_images"] == 360
    assert (folder / f"{run_id}_best.pth").exists()
    assert (folder / f"{run_id}.log").read_text().count("epoch ") >= 3
    assert len((folder / f"{run_id}_epochs.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_main_test_float64_ann_equals_snn(digits_run, tmp_path):
    folder, run_id = digits_run
    result = evaluate_digits_run(folder, run_id, tmp_path / "result.json")
    assert result["num_images"] == 360
    assert result["ann_top1"] == result["snn_top1"]
    assert result["agreement"] == 100.0
    assert all(v == 1.0 for v in result["layer_count_agreement"].values())
    assert result["levels"] == [4, 2, 8, 4, 3] and result["dtype"] == "float64"
    assert result["arch"] == "vgg_small" and result["dataset"] == "digits"
    assert result["ann_top1"] > 80  # a trained network, not chance (10 %)


def test_cifar10_format_train_and_test(cifar10_root, tmp_path):
    folder = tmp_path / "ckpt"
    assert run_script(main_train, [
        "-data=cifar10", "-arch=vgg_small", "-epochs=1", "--id=myid", "-b", "16", "-j", "0",
        "--data-root", str(cifar10_root), "--checkpoint-dir", str(folder), "--no-progress"]) == 0
    assert (folder / "myid.pth").exists()
    # the reference README's test line, verbatim, plus where the data and checkpoints are
    assert run_script(main_test, [
        "-data=cifar10", "-arch=vgg_small", "--id=myid", "-arch=vgg_small", "--dtype",
        "float64", "--data-root", str(cifar10_root), "--checkpoint-dir", str(folder), "-j", "0",
        "--no-progress"]) == 0
    result = read_json(folder / "myid_test.json")
    assert result["num_images"] == 32 and result["ann_top1"] == result["snn_top1"]
    assert result["agreement"] == 100.0


def test_reference_readme_lines_parse_verbatim():
    args = main_train.get_args_parser().parse_args(
        "-data=cifar10 -arch=vgg16 -epochs=200 --id=myid".split())
    assert (args.dataset, args.arch, args.epochs, args.id) == ("cifar10", "vgg16", 200, "myid")
    args = main_train.get_args_parser().parse_args(
        "-data=cifar100 -arch=resnet18 -epochs=300 --id=x --resume_from_ckpt=1 -b 300 -lr 0.05 "
        "-wd 5e-4 -j 4 --seed 3 -dev 0 -suffix s1 -L 8".split())
    assert (args.resume_from_ckpt, args.batch_size, args.workers, args.suffix, args.level) == \
        (1, 300, 4, "s1", 8)
    args = main_test.get_args_parser().parse_args(
        "-data=cifar10 -arch=vgg16 --id=myid -arch=vgg16".split())
    assert (args.dataset, args.arch, args.id) == ("cifar10", "vgg16", "myid")
    with pytest.raises(SystemExit):  # no prefix matching: --lev is not --levels
        main_train.get_args_parser().parse_args(["--lev", "4"])


@pytest.mark.slow
def test_reference_checkpoint_needs_and_uses_levels(tmp_path, capsys):
    path = tmp_path / "ref.pth"
    state_dict = reference_state_dict("vgg16", torch.Generator().manual_seed(0))
    torch.save({"model_state_dict": state_dict}, path)
    common = ["-data", "digits", "-arch", "vgg16", "--checkpoint", str(path), "-j", "0",
              "--no-progress", "--num-images", "6", "--dtype", "float64"]
    assert run_script(main_test, common) == 2
    assert_one_line_error(capsys, "--levels")
    output = tmp_path / "ref.json"
    levels = ",".join(map(str, REFERENCE_LEVELS["vgg16"]))
    assert run_script(main_test, common + ["--levels", levels, "--output", str(output)]) == 0
    result = read_json(output)
    assert result["ann_top1"] == result["snn_top1"] and result["agreement"] == 100.0
    assert result["levels"] == REFERENCE_LEVELS["vgg16"]


@pytest.mark.slow
def test_bad_inputs_give_one_line_and_exit_2(digits_run, tmp_path, capsys):
    folder, run_id = digits_run
    base = ["-data", "digits", "-j", "0", "--no-progress", "--checkpoint-dir", str(folder)]
    for argv, fragments in [
        (["--id", "nope"], ["does not exist", "shared"]),
        (["--id", run_id, "-arch", "vgg16"], ["vgg_small", "-arch"]),
        (["--id", run_id, "--levels", "4,4"], ["5 QCFS layers", "got 2 levels"]),
        (["--id", run_id, "--levels", "4,x"], ["--levels"]),
    ]:
        assert run_script(main_test, base + argv) == 2, argv
        assert_one_line_error(capsys, *fragments)

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((folder / f"{run_id}.pth").read_bytes()[:2000])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    for path in (truncated, text, tmp_path):
        assert run_script(main_test, base + ["--checkpoint", str(path)]) == 2
        assert_one_line_error(capsys, str(path))


@pytest.mark.slow
def test_training_refuses_bad_input_and_keeps_checkpoints(digits_run, tmp_path, capsys):
    folder, run_id = digits_run
    before = (folder / f"{run_id}.pth").read_bytes()
    base = ["-data", "digits", "-arch", "vgg_small", "-epochs", "1", "-j", "0",
            "--no-progress", "--checkpoint-dir", str(folder)]
    for argv, fragments in [
        (["--id", run_id], ["already has this checkpoint", "--resume auto", "--overwrite"]),
        (["--id", "other", "--levels", "4,4,4"], ["5 QCFS layers", "got 3 levels"]),
        (["--id", "other", "--levels", "0"], ["level"]),
        (["--id", "other", "--resume", "x.pth", "--initial-checkpoint", "y.pth"],
         ["--resume", "--initial-checkpoint"]),
        (["--id", run_id, "--resume_from_ckpt=1", "-arch", "vgg16"], ["vgg_small"]),
    ]:
        argv = base + argv
        if "-arch" in argv[len(base):]:
            argv = [a for i, a in enumerate(argv) if i not in (2, 3)]  # drop base -arch
        assert run_script(main_train, argv) == 2, argv
        assert_one_line_error(capsys, *fragments)
    assert (folder / f"{run_id}.pth").read_bytes() == before
    assert not (folder / "other.pth").exists()

    missing = ["-data", "cifar10", "--data-root", str(tmp_path / "empty"), "--id", "c",
               "-arch", "vgg_small", "--checkpoint-dir", str(tmp_path), "-j", "0"]
    assert run_script(main_train, missing) == 2
    assert_one_line_error(capsys, "cifar10 not found", "--download", "-data digits")
    with pytest.raises(SystemExit) as info:
        main_train.get_args_parser().parse_args(["-arch", "alexnet"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main_train.get_args_parser().parse_args(["-data", "mnist"])
    assert info.value.code == 2
