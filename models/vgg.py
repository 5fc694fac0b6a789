"""VGG networks with QCFS activations and average pooling (CIFAR and ImageNet variants)."""
from torch import nn

from .qcfs import QCFS

# Channels of each convolution, grouped by stage; every stage ends with a 2x2 average pool.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
SMALL_STAGES = ((16,), (32,), (64,))


class VGG(nn.Module):
    """VGG with stages ``layer1..layerN`` and a three-layer classifier, as the reference builds it.

    Module names follow the reference PASCAL code (``layer1.0`` conv, ``layer1.1`` BN,
    ``layer1.2`` QCFS, ``layer1.3`` dropout, ..., ``classifier.1`` first linear layer), so its
    checkpoints map onto this class one to one. Every activation is followed by a Dropout of
    probability ``dropout`` (the reference's default is 0), and initialisation is the
    reference's: convolutions Kaiming normal (fan_out, ReLU gain), BatchNorm weight 1 and bias
    0, every Linear bias 0 (Linear weights keep PyTorch's default).

    ``legacy_dropout=(conv_p, fc_p)`` rebuilds the layout of checkpoints written before the
    dropout was recorded: a Dropout(conv_p) only between the convolutions of a stage (none
    before a pool) and Dropout(fc_p) after the hidden linear layers. The parameters sit at the
    same indices in both layouts.

    ``pool`` sits between the convolutions and the classifier: identity for the CIFAR VGG-16
    (32x32 inputs reach 1x1 after five pools), an adaptive average pool otherwise (7x7 for
    ImageNet, as torchvision's VGG); all are linear, so the spiking conversion stays exact.
    """

    def __init__(self, stages, num_classes, hidden, act_layer=QCFS, pool=None, dropout=0.0,
                 legacy_dropout=None):
        super().__init__()
        conv_p, fc_p = (dropout, dropout) if legacy_dropout is None else legacy_dropout
        in_channels = 3
        for index, channels in enumerate(stages, start=1):
            layers = []
            for position, out_channels in enumerate(channels):
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1),
                           nn.BatchNorm2d(out_channels), act_layer()]
                if legacy_dropout is None or position < len(channels) - 1:
                    layers.append(nn.Dropout(conv_p))
                in_channels = out_channels
            layers.append(nn.AvgPool2d(2))
            self.add_module(f"layer{index}", nn.Sequential(*layers))
        self.num_stages = len(stages)
        self.pool = pool if pool is not None else nn.Identity()
        pooled = 1
        if isinstance(self.pool, nn.AdaptiveAvgPool2d):
            size = self.pool.output_size
            size = (size, size) if isinstance(size, int) else size
            pooled = size[0] * size[1]
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * pooled, hidden), act_layer(), nn.Dropout(fc_p),
            nn.Linear(hidden, hidden), act_layer(), nn.Dropout(fc_p),
            nn.Linear(hidden, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x):
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.classifier(self.pool(x))


# The dropout of VGG checkpoints written before model_args recorded it.
LEGACY_DROPOUT = {"vgg16": (0.1, 0.5), "vgg_small": (0.0, 0.0)}


def vgg16(num_classes, variant, act_layer, dropout=0.0, legacy_dropout=None):
    pool = None if variant == "cifar" else nn.AdaptiveAvgPool2d(7)
    return VGG(VGG16_STAGES, num_classes, hidden=4096, act_layer=act_layer, pool=pool,
               dropout=dropout, legacy_dropout=legacy_dropout)


def vgg_small(num_classes, variant, act_layer, dropout=0.0, legacy_dropout=None):
    """Three conv stages of 16/32/64 channels and a 128-unit classifier: 5 QCFS layers.

    For demos and tests (a training step costs ~1/50 of VGG-16's); not a paper model. The
    classifier sees a 4x4 map (not a global average): digits need the spatial layout, and
    with it the network reaches ~96 % on the bundled digits in 3 epochs.
    """
    return VGG(SMALL_STAGES, num_classes, hidden=128, act_layer=act_layer,
               pool=nn.AdaptiveAvgPool2d(4), dropout=dropout, legacy_dropout=legacy_dropout)
