"""CIFAR-10/100 from an image-folder copy (generated here; no test reads a real copy) and the
CIFAR ResNet-20."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import data
import models
from conftest import main_test, main_train, run_script
from errors import DataError


def write_cifar_folder(root, classes, per_class=(3, 2), fmt="PNG", seed=0, size=32):
    """``root/{train,test}/CLASS/NNNN.ext`` with random images; returns {(split, class):
    [uint8 arrays in file-name order]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in zip(("train", "test"), per_class, strict=True):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            arrays = []
            # Written in reverse so that sorted file-name order differs from creation order.
            for index in reversed(range(count)):
                array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(array).save(folder / f"{index:04d}.{fmt.lower()}", fmt)
                arrays.insert(0, array)
            written[split, name] = arrays
    return written


def eval_transform(name, array):
    """torchvision's evaluation transform applied to a uint8 image by hand."""
    mean, std = ((data.CIFAR10_MEAN, data.CIFAR10_STD) if name == "cifar10"
                 else (data.CIFAR100_MEAN, data.CIFAR100_STD))
    image = torch.tensor(array, dtype=torch.float32).permute(2, 0, 1) / 255
    return (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_folder_copy_gives_labels_in_torchvision_order_and_the_exact_pixels(tmp_path, name):
    classes = data.CIFAR10_CLASSES if name == "cifar10" else data.CIFAR100_CLASSES
    written = write_cifar_folder(tmp_path, classes)
    for split, per_class in (("train", 3), ("test", 2)):
        dataset = data.get_dataset(name, str(tmp_path), split, augment=False)
        assert isinstance(dataset, data.CifarFolder)
        assert "image folders" in dataset.source and split in dataset.source
        assert len(dataset) == per_class * len(classes)
        # The label of an image is its folder's index in torchvision's class list; the
        # classes are interleaved: the first file of every class, then the second, ...
        assert dataset.targets == [label for _ in range(per_class)
                                   for label in range(len(classes))]
        for index in (0, len(classes) - 1, len(classes), len(dataset) - 1):
            label, rank = index % len(classes), index // len(classes)
            image, target = dataset[index]
            assert target == label
            expected = eval_transform(name, written[split, classes[label]][rank])
            # PNG is lossless: the same pixels; the tolerance covers the float rounding of
            # ToTensor/Normalize against the hand computation.
            torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)


def test_torchvision_class_lists_match_the_datasets_meta_files():
    # CIFAR-10's batches.meta and CIFAR-100's meta list the names alphabetically; torchvision
    # numbers the classes in that order.
    assert list(data.CIFAR10_CLASSES) == sorted(data.CIFAR10_CLASSES)
    assert list(data.CIFAR100_CLASSES) == sorted(data.CIFAR100_CLASSES)
    assert len(set(data.CIFAR100_CLASSES)) == 100
    assert {"apple", "aquarium_fish", "maple_tree", "worm"} <= set(data.CIFAR100_CLASSES)


def test_jpeg_copy_and_training_augmentation(tmp_path):
    write_cifar_folder(tmp_path, data.CIFAR10_CLASSES, per_class=(2, 1), fmt="JPEG")
    dataset = data.get_dataset("cifar10", str(tmp_path), "train")
    image, label = dataset[5]
    assert image.shape == (3, 32, 32) and label == 5
    # The reference recipe draws from torch's generator: seeded, it repeats itself.
    seeded = data.SeededAugmentation(dataset, seed=3)
    assert torch.equal(seeded[5][0], seeded[5][0])
    seeded.set_epoch(1)
    first = seeded[5][0]
    seeded.set_epoch(2)
    assert not torch.equal(first, seeded[5][0])


def test_pickled_batches_win_over_folders(cifar10_root):
    write_cifar_folder(cifar10_root, data.CIFAR10_CLASSES, per_class=(1, 1))
    dataset = data.get_dataset("cifar10", str(cifar10_root), "test")
    assert len(dataset) == 32 and "pickled batches" in dataset.source


@pytest.mark.parametrize("change, message", [
    (lambda root: (root / "test" / "truck").rename(root / "test" / "lorry"),
     "missing truck; unexpected lorry"),
    (lambda root: [p.unlink() for p in (root / "test" / "cat").iterdir()], "holds no images"),
    (lambda root: Image.new("RGB", (28, 28)).save(root / "test" / "dog" / "9999.png"),
     "is 28x28: CIFAR images are 32x32"),
])
def test_bad_folder_copy_is_one_line(tmp_path, change, message):
    write_cifar_folder(tmp_path, data.CIFAR10_CLASSES, per_class=(1, 1))
    change(tmp_path)
    with pytest.raises(DataError, match=message) as error:
        data.get_dataset("cifar10", str(tmp_path), "test")
    assert "\n" not in str(error.value)


def test_missing_cifar_names_both_layouts(tmp_path):
    with pytest.raises(DataError, match="image-folder copy with train/CLASS/"):
        data.get_dataset("cifar10", str(tmp_path), "test")


def test_resnet20_structure():
    model = models.create_model("resnet20", num_classes=10, levels=4)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # 1 stem + 9 blocks x 2 convs + 2 projection shortcuts (into stages 2 and 3).
    assert len(convs) == 21
    assert [c.out_channels for c in convs if c.kernel_size == (3, 3)] == \
        [16] + [16] * 6 + [32] * 6 + [64] * 6
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs if c.kernel_size == (1, 1)] \
        == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    assert len(models.qcfs_layers(model)) == 19
    # Counted by hand: convs 432 + 6 * 2304 + 4608 + 5 * 9216 + 18432 + 5 * 36864, the
    # projections 512 + 2048, BatchNorm weights and biases 2 * (16 * 7 + 32 * 7 + 64 * 7),
    # the classifier 650 (272,474 in all) and one threshold per QCFS layer.
    assert sum(p.numel() for p in model.parameters()) == 272_474 + 19
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.fc.in_features == 64


def test_resnet20_trains_and_converts_on_a_folder_copy(tmp_path):
    root = tmp_path / "cifar"
    write_cifar_folder(root, data.CIFAR10_CLASSES, per_class=(2, 1))
    folder = tmp_path / "runs"
    assert run_script(main_train, [
        "-data", "cifar10", "--data-root", str(root), "-arch", "resnet20", "-epochs", "1",
        "-b", "10", "--levels", "3", "--id", "r20", "-j", "0", "--no-progress",
        "--checkpoint-dir", str(folder)]) == 0
    log = (folder / "r20.log").read_text()
    assert "data: cifar10: image folders" in log and "20 train / 10 test images" in log
    output = tmp_path / "r20.json"
    assert run_script(main_test, [
        "-data", "cifar10", "--data-root", str(root), "--id", "r20", "--checkpoint-dir",
        str(folder), "--dtype", "float64", "-j", "0", "--no-progress", "--output",
        str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["arch"] == "resnet20" and result["levels"] == [3] * 19
    assert result["agreement"] == 100.0
    assert set(result["differing_neurons"].values()) == {0}
    # Neurons per image: the stem and stage 1 (7 layers of 16 x 32 x 32), stage 2 (6 of
    # 32 x 16 x 16), stage 3 (6 of 64 x 8 x 8); 10 test images.
    assert result["neurons_compared"] == 10 * (7 * 16 * 32 * 32 + 6 * 32 * 16 * 16
                                               + 6 * 64 * 8 * 8)


def test_per_sample_seeding_draws_what_a_full_torch_seed_draws(tmp_path):
    # SeededAugmentation seeds torch's CPU generator alone; the augmentations must be those
    # that torch.manual_seed with the same seed gives (the recipe draws from that generator).
    write_cifar_folder(tmp_path, data.CIFAR10_CLASSES, per_class=(1, 1))
    dataset = data.get_dataset("cifar10", str(tmp_path), "train")
    seeded = data.SeededAugmentation(dataset, seed=7)
    seeded.set_epoch(3)
    for index in range(len(dataset)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((7 * 1_000_003 + 3) * 10_000_019 + index) % 2**63)
            expected = dataset[index][0]
        assert torch.equal(seeded[index][0], expected)
