"""Fixtures shared by the script tests: one small trained digits checkpoint, CIFAR-format data."""
import json
import pickle

import pytest

try:
    import numpy as np
    import torch
except ImportError as error:  # the usual cause: pytest run outside the installed environment
    raise pytest.UsageError(
        f"{error}: the tests need the packages of requirements.txt; install them (README, "
        "Install) and run pytest with that environment's python3") from None

import main_test
import main_train
from utils import run_main


def run_script(module, argv):
    """Run ``module.main`` in-process exactly as its command line would; returns exit status."""
    return run_main(module.main, module.get_args_parser().parse_args(argv), module.TERMS)


def evaluate_digits_run(folder, run_id, output):
    """main_test in float64 on run ``run_id``'s digits checkpoint (all 360 test images);
    returns the JSON result it wrote to ``output``."""
    assert run_script(main_test, ["-data", "digits", "--id", run_id, "--checkpoint-dir",
                                  str(folder), "--dtype", "float64", "-j", "0",
                                  "--no-progress", "--output", str(output)]) == 0
    return json.loads(output.read_text())


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """vgg_small trained 3 epochs on the bundled digits: ``(checkpoint_dir, run_id)``."""
    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("digits")
    status = run_script(main_train, [
        "-data", "digits", "-arch", "vgg_small", "-epochs", "3", "--id", "shared", "-b", "32",
        "--levels", "4,2,8,4,3", "-lr", "0.1", "--init-threshold", "2", "-j", "0",
        "--no-progress", "--checkpoint-dir", str(folder)])
    assert status == 0
    return folder, "shared"


def write_cifar10(root, train_per_batch=16, test=32, seed=0):
    """A CIFAR-10-format folder (``cifar-10-batches-py``) with random images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name, count):
        batch = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, count)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)

    for i in range(1, 6):
        dump(f"data_batch_{i}", train_per_batch)
    dump("test_batch", test)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return root


@pytest.fixture
def cifar10_root(tmp_path, monkeypatch):
    """Generated CIFAR-10 data. torchvision checks the md5 of the real archive's files; ours
    are random, so the test (never the product code) turns that integrity check off."""
    from torchvision.datasets import cifar
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: True)
    return write_cifar10(tmp_path / "data")


__all__ = ["run_script", "main_test", "main_train"]
