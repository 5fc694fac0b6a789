"""ResNet-18/34 (the paper's) and the CIFAR ResNet-20 with QCFS activations, average pooling
and a residual-addition module."""
from torch import nn

from .qcfs import QCFS


class ResidualAdd(nn.Module):
    """``branch + shortcut`` (the converter sees the addition in the traced graph; the branch,
    first, gives the sum its number of steps)."""

    def forward(self, branch, shortcut):
        return branch + shortcut


class BasicBlock(nn.Module):
    """conv-BN-QCFS-conv-BN on the branch, identity or 1x1 conv-BN on the shortcut, then QCFS.

    Names follow the reference code (``residual_function``, ``shortcut``, ``act``). The two
    QCFS layers, in forward order, are ``residual_function.2`` and ``act``.
    """

    def __init__(self, in_channels, channels, stride, act_layer=QCFS):
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            act_layer(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.add = ResidualAdd()
        self.act = act_layer()

    def forward(self, x):
        return self.act(self.add(self.residual_function(x), self.shortcut(x)))


class ResNet(nn.Module):
    """ResNet with stages ``conv2_x, conv3_x, ...`` (reference naming).

    ``variant="cifar"``: 3x3 stride-1 stem. ``variant="imagenet"``: 7x7 stride-2 stem and a
    3x3 stride-2 *average* pool (max pooling would break the spiking equivalence).
    ``widths``: the channels of the stem and of each stage (one per entry of
    ``blocks_per_stage``); the first stage has stride 1, the others stride 2, and a block
    whose shape changes has a 1x1 conv + BatchNorm projection shortcut.
    """

    def __init__(self, blocks_per_stage, num_classes, variant="cifar", act_layer=QCFS,
                 widths=(64, 128, 256, 512)):
        super().__init__()
        stem = widths[0]
        if variant == "cifar":
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), act_layer())
        else:
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem),
                act_layer(), nn.AvgPool2d(3, stride=2, padding=1))
        in_channels = stem
        for index, (channels, num_blocks) in enumerate(zip(widths, blocks_per_stage,
                                                           strict=True)):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(BasicBlock(in_channels, channels, stride if block_index == 0 else 1,
                                         act_layer=act_layer))
                in_channels = channels
            self.add_module(f"conv{index + 2}_x", nn.Sequential(*blocks))
        self.num_stages = len(blocks_per_stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        for index in range(self.num_stages):
            x = getattr(self, f"conv{index + 2}_x")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes, variant, act_layer):
    return ResNet((2, 2, 2, 2), num_classes, variant, act_layer)


def resnet34(num_classes, variant, act_layer):
    return ResNet((3, 4, 6, 3), num_classes, variant, act_layer)


def resnet20(num_classes, variant, act_layer):
    """The CIFAR ResNet-20 of He et al. (2016): a 16-channel 3x3 stem, three stages of three
    basic blocks with 16, 32 and 64 channels (strides 1, 2, 2), global average pooling and a
    linear classifier; 19 QCFS layers. Where the shape changes the shortcut is a 1x1 conv +
    BatchNorm projection (He et al.'s option B; their CIFAR networks used option A,
    zero-padding)."""
    return ResNet((3, 3, 3), num_classes, variant, act_layer, widths=(16, 32, 64))
