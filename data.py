"""Datasets and loaders: CIFAR-10/100 (torchvision's pickled batches or an image-folder copy)
and ImageNet from disk, and the bundled digits."""
import functools
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from errors import DataError
from utils import DATASETS, ignore_signals_in_worker

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision's class order (the label numbers) of CIFAR-10 and CIFAR-100: the datasets' own
# meta files, which list the names in alphabetical order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")
# Where torchvision's CIFAR classes keep their pickled batches under the root.
CIFAR_PICKLE_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
DIGITS_SPLIT_SEED = 0  # fixed: the digits train/test split never changes
DIGITS_TEST_FRACTION = 0.2


class Cutout:
    """Zero a ``size`` x ``size`` square of a ``(C, H, W)`` tensor, centred on a pixel drawn
    uniformly from the whole image and clipped at the border (as the reference code's Cutout:
    near a border the erased area is smaller; centred in a corner, a quarter of the square).
    torchvision's RandomErasing always erases a full square inside the image, so it differs.
    Draws from torch's generator (seeded per sample in training)."""

    def __init__(self, size=16):
        self.size = int(size)

    def __call__(self, image):  # (C, H, W)
        height, width = image.shape[-2:]
        y = int(torch.randint(height, ()))
        x = int(torch.randint(width, ()))
        top, left = max(0, y - self.size // 2), max(0, x - self.size // 2)
        bottom, right = min(height, y + self.size // 2), min(width, x + self.size // 2)
        image = image.clone()
        image[..., top:bottom, left:right] = 0
        return image

    def __repr__(self):
        return f"Cutout(size={self.size})"


def cifar_transforms(dataset, train, image_size=32):
    """The reference CIFAR recipe: crop 32 pad 4, flip, AutoAugment (CIFAR-10 policy, fill 128),
    normalise, Cutout 16 (random centre, clipped at the border). Another ``image_size`` first
    resizes the 32x32 images and scales the padding and the Cutout square with it."""
    from torchvision import transforms as T
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset == "cifar10" else \
        (CIFAR100_MEAN, CIFAR100_STD)
    resize = [] if image_size == 32 else [T.Resize(image_size)]
    if not train:
        return T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])
    return T.Compose([
        *resize, T.RandomCrop(image_size, padding=image_size // 8), T.RandomHorizontalFlip(),
        T.AutoAugment(T.AutoAugmentPolicy.CIFAR10, fill=[128, 128, 128]),
        T.ToTensor(), T.Normalize(mean, std), Cutout(image_size // 2),
    ])


def imagenet_transforms(train, image_size=224):
    """Training: RandomResizedCrop, flip, ColorJitter(0.2, 0.2, 0.2, 0.1) (the reference's),
    normalise. Evaluation: resize to size * 8/7 (256 for 224), centre crop, normalise."""
    from torchvision import transforms as T
    if train:
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(),
                          T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
                          T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    resize = int(round(image_size * 256 / 224))
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with the package).

    Upsampled to 32x32 (bilinear; ``image_size`` for another size), repeated to 3 channels,
    scaled to [-1, 1]. The split is a fixed stratified 80/20 split (``train_test_split(
    test_size=0.2, stratify=labels, random_state=0)``): 1,437 training and 360 test images.
    Training augmentation: random shifts of up to 1/16 of the size (2 pixels at 32x32;
    zero-padded crop).
    """

    def __init__(self, train, augment=None, image_size=32):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = torch.nn.functional.interpolate(images, size=image_size, mode="bilinear",
                                                 align_corners=False)
        self.image_size, self.shift = image_size, max(1, image_size // 16)
        images = (images.repeat(1, 3, 1, 1) - 0.5) / 0.5
        labels = np.asarray(digits.target)
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels,
            random_state=DIGITS_SPLIT_SEED)
        index = torch.as_tensor(train_idx if train else test_idx)
        self.images = images[index]
        self.targets = [int(t) for t in labels[index.numpy()]]
        self.augment = augment if augment is not None else train

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        image = self.images[i]
        if self.augment:
            size, shift = self.image_size, self.shift
            padded = torch.nn.functional.pad(image, (shift,) * 4)
            dy, dx = torch.randint(0, 2 * shift + 1, (2,)).tolist()
            image = padded[:, dy:dy + size, dx:dx + size]
        return image, self.targets[i]


def get_dataset(name, root, split, download=False, augment=None, image_size=None):
    """The ``split`` ("train" or "test") of dataset ``name``.

    ``image_size``: the side of the images it yields (default: 32 for CIFAR and the digits,
    224 for ImageFolder data).

    ``augment`` defaults to ``split == "train"``; ``augment=False`` gives the training images
    with evaluation transforms (what get_stats.py measures on).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}", field="dataset",
                        advice=f"choose one of {', '.join(DATASETS)}")
    train = split == "train"
    augment = train if augment is None else augment
    if name == "digits":
        return DigitsDataset(train=train, augment=augment, image_size=image_size or 32)
    if name in ("cifar10", "cifar100"):
        return cifar_dataset(name, root, train, download,
                             cifar_transforms(name, augment, image_size or 32))
    return image_folder(root, "train" if train else "val",
                        imagenet_transforms(augment, image_size or 224))


def cifar_layout(name, root):
    """Which copy of CIFAR ``root`` holds: ``"pickle"`` (torchvision's batches, which win when
    both are there), ``"folder"`` (``root/train/CLASS/*`` and ``root/test/CLASS/*``) or None."""
    if os.path.isdir(os.path.join(root, CIFAR_PICKLE_FOLDERS[name])):
        return "pickle"
    if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "test")):
        return "folder"
    return None


def cifar_dataset(name, root, train, download, transform):
    """CIFAR-10/100 from torchvision's pickled batches or from an image-folder copy.

    The dataset's ``source`` attribute says which was read (the scripts log it)."""
    layout = cifar_layout(name, root)
    if layout == "folder" and not download:
        dataset = CifarFolder(name, root, train, transform)
    else:
        from torchvision import datasets
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        try:
            dataset = cls(root, train=train, download=download, transform=transform)
        except RuntimeError as error:
            raise DataError(
                f"{name} not found under {os.path.abspath(root)} ({error})", field="data_root",
                advice="pass download=True to fetch it, set `data_root` (or $PASCAL_DATA) to "
                f"where it is (torchvision's {CIFAR_PICKLE_FOLDERS[name]}/ or an image-folder "
                "copy with train/CLASS/ and test/CLASS/), or try the bundled dataset with "
                "dataset='digits'") from None
        dataset.source = (f"{name}: torchvision's pickled batches in "
                          f"{os.path.join(os.path.abspath(root), CIFAR_PICKLE_FOLDERS[name])}")
    return dataset


class CifarFolder(Dataset):
    """CIFAR-10/100 from an image-folder copy: ``root/{train,test}/CLASS/*.{png,jpg,...}``.

    The class folders must be exactly the dataset's classes (CIFAR-10's ten, CIFAR-100's
    hundred fine labels, named as in torchvision's ``classes``); labels follow torchvision's
    class order, so a network trained on one copy evaluates on the other. Every image is
    decoded once, when the dataset is made, into one ``(N, 32, 32, 3)`` uint8 array (the whole
    of CIFAR-10 is 184 MB) and then served exactly as torchvision's CIFAR classes serve theirs
    (a PIL image through ``transform``): the same recipe, no decoding per epoch. Images are
    ordered by file name within each class and the classes interleaved (the first image of
    every class in class order, then the second, ...), so the first N images of a split are a
    class-balanced subset.
    """

    def __init__(self, name, root, train, transform=None):
        classes = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
        split = "train" if train else "test"
        folder = os.path.join(root, split)
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        if found != sorted(classes):
            missing = sorted(set(classes) - set(found))
            extra = sorted(set(found) - set(classes))
            raise DataError(f"{folder} must hold exactly the {len(classes)} {name} class "
                            f"folders: missing {_first(missing)}; unexpected {_first(extra)}")
        self.data, targets = _decode_cifar_folder(os.path.abspath(folder), classes)
        self.targets, self.classes, self.transform = list(targets), list(classes), transform
        self.source = (f"{name}: image folders {os.path.abspath(folder)} ({len(targets)} "
                       "images, decoded into memory)")

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        from PIL import Image
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


@functools.lru_cache(maxsize=4)
def _decode_cifar_folder(folder, classes):
    """``(uint8 array (N, 32, 32, 3), labels)`` of ``folder/CLASS/*`` in class order; decoded
    once per process (a run's training and calibration sets share one array)."""
    entries = []  # (rank of the file in its class, label, path)
    for label, cls in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(folder, cls))
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"{os.path.join(folder, cls)} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        entries += [(rank, label, os.path.join(folder, cls, f)) for rank, f in enumerate(files)]
    # the classes interleaved (the first file of every class, then the second, ...): the
    # first N images of a split (--num-images N) cover the classes evenly
    entries.sort()
    paths = [path for _, _, path in entries]
    targets = [label for _, label, _ in entries]
    data = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        image = load_rgb_image(path)
        if image.size != (32, 32):
            raise DataError(f"{path} is {image.size[0]}x{image.size[1]}: CIFAR images are "
                            "32x32", advice="set `image_size` to resize them for a network")
        data[index] = np.asarray(image)
    data.setflags(write=False)
    return data, tuple(targets)


def image_folder(root, split, transform):
    """``root/split`` as an ImageFolder, with one-line errors for a missing or empty tree."""
    from torchvision import datasets
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(f"{path} is not a directory: an ImageNet-style root needs train/ and "
                        "val/ folders with one sub-folder per class", advice="set `data_root`")
    try:
        return datasets.ImageFolder(path, transform=transform, loader=load_rgb_image)
    except (FileNotFoundError, RuntimeError) as error:
        raise DataError(f"no usable images under {path}: {error}") from None


def load_rgb_image(path):
    """Open an image as RGB; an unreadable file is a one-line error that names it."""
    from PIL import Image, UnidentifiedImageError
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"cannot read image {path} ({type(error).__name__})",
                        advice="remove or replace the file") from None


def make_loader(dataset, batch_size, train, workers=0, generator=None, sampler=None,
                device=None):
    """A DataLoader; shuffled for training (driven by ``generator`` for reproducibility).

    Workers ignore SIGINT/SIGTERM: the main process decides how a run stops.
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None,
                      sampler=sampler, num_workers=workers, generator=generator,
                      pin_memory=device is not None and device.type == "cuda",
                      drop_last=False, persistent_workers=False,
                      worker_init_fn=ignore_signals_in_worker if workers else None)


class SeededAugmentation(Dataset):
    """Draw each sample's random augmentation from its own seed: (run seed, epoch, index).

    The augmentation of a sample then does not depend on which worker loads it, on the
    number of workers, or on where a run was interrupted and resumed, so a resumed run sees
    exactly the images an uninterrupted one would. The global RNG is left untouched.
    """

    def __init__(self, dataset, seed):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone (what the transforms draw from): torch.manual_seed would
            # also queue a seed for every accelerator backend, which costs more per sample
            # than decoding and augmenting a CIFAR image.
            torch.default_generator.manual_seed(
                ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % 2**63)
            return self.dataset[index]


def shard_order(num_items, seed, rank=0, world_size=1):
    """This process's share of one epoch's shuffled sample order.

    The epoch's order is ``randperm(num_items)`` drawn from ``seed`` alone, padded by repeating
    its first indices to a multiple of ``world_size`` (as DistributedSampler does); process
    ``rank`` takes every ``world_size``-th entry from position ``rank``. So after ``s`` steps of
    ``b`` images on every process, the processes together have consumed exactly the first
    ``s * b * world_size`` entries of the epoch's order, whatever the number of processes: a
    run resumes at a step by skipping ``s * b`` entries of its share.
    """
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)).tolist()
    if world_size > 1 and num_items % world_size:
        order += order[:world_size - num_items % world_size]
    return order[rank::world_size]


def check_image_folder(root):
    """Check an ImageNet-style tree ``root/{train,val}/CLASS/IMAGE``; return the class names.

    Cheap (one directory listing per class, stopping at the first image), so the launcher can
    run it before any worker starts. Raises a DataError when ``root``, ``train/`` or
    ``val/`` is missing, ``train/`` has no class folders, ``val/`` does not have the same class
    folders as ``train/`` (ImageFolder numbers classes by sorted folder name, so a missing
    folder would silently shift every label after it), or a class folder holds no image.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS
    layout = "DIR/train/CLASS/*.jpg and DIR/val/CLASS/*.jpg"
    if not os.path.isdir(root):
        raise DataError(f"{root} is not a directory", advice=f"pass the folder that holds "
                                                             f"train/ and val/ ({layout})")
    classes = {}
    for split in ("train", "val"):
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise DataError(f"{path} is missing: {root} must hold train/ and val/, each with one "
                            f"sub-folder of images per class ({layout})")
        with os.scandir(path) as entries:
            classes[split] = sorted(e.name for e in entries if e.is_dir())
        if not classes[split]:
            raise DataError(f"{path} has no class sub-folders",
                            advice=f"put each class's images in {split}/CLASS/ ({layout})")
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise DataError(f"train/ and val/ under {root} must have the same class folders: "
                        f"only in train/: {_first(only_train)}; only in val/: {_first(only_val)}")
    for split in ("train", "val"):
        for name in classes[split]:
            folder = os.path.join(root, split, name)
            if not _has_file(folder, IMG_EXTENSIONS):
                raise DataError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)})",
                                advice="add some or remove the folder from both train/ and "
                                       "val/")
    return classes["train"]


def _has_file(folder, extensions):
    for directory, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(extensions) for f in files):
            return True
    return False


def _first(names, count=5):
    if not names:
        return "none"
    return ", ".join(names[:count]) + (f" (and {len(names) - count} more)"
                                       if len(names) > count else "")
