"""A differential fuzzer of the converter: random small ReLU models written as Python source.

Each model is a ``class Model(nn.Module)`` drawn from a grammar of the operations the
converter takes (and some it must refuse), in their module and functional spellings, with
positional and keyword arguments, positive and negative dimensions, broadcast constants and
buffers: convolutions (also transposed, also ``F.conv2d``/``F.conv_transpose2d``/``F.linear``
with registered ``nn.Parameter`` weights, also with reflect/circular padding modes),
upsampling (nearest: copies that keep bursts; bilinear: resampling), padding, pixel
(un)shuffle, stacking, sums, ReLUs spelled as clamps and hardtanh, and dict or tuple outputs.
It is made a QCFS network by ``models.qcfsify`` with random levels 1-8 (3, 5 and 6
included), given random weights, thresholds calibrated to keep it alive and, in half of the
models, one shared round threshold for every layer (ties: values on rounding boundaries).

The property (:func:`check`): the model is refused at conversion with a one-line
``ValueError`` that names what it refuses, or, on both simulation paths, every neuron's spike
count equals its ANN level, the outputs agree with the ANN's (a dict or tuple output: the
same keys or length, each tensor), and the cost report, T_eff and the latencies compute, with
the meter's spike counts equal to the ANN's levels.

A failing model prints as the Python source that builds it. Run many from the command line:

    python3 tests/fuzz_models.py --count 20000 --seed 1 --json results/fuzz.json
"""
import argparse
import collections
import json
import random
import re
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: F401  (used by the generated sources)
from torch import nn  # noqa: F401

sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))

import models  # noqa: E402
import snn_cost  # noqa: E402
from cost_meter import CostMeter  # noqa: E402
from helpers import (ann_levels, assert_events_cover_zero_skip, calibrate_thresholds_,  # noqa: E402
                     randomize_)
from models.timing import (latency_steps, layer_fan_ins, pipelined_latency_steps,  # noqa: E402
                           teff)

LEVELS = (1, 2, 3, 4, 5, 6, 7, 8)
# Every spelling the grammar writes that the converter takes (the test asserts each occurs in
# accepted models); the grammar also writes "refuse:*" forms (a product of trains, uses of the
# batch dimension, clamps to other bounds than [0, m], a pad with a nonzero constant, a sum of
# every dim, a max pool after bilinear upsampling) and F.dropout with training=self.training,
# which must be refused (or, where they happen to be exact, as a max pool of the analog image
# resampled, be exact).
ACCEPTED_FORMS = (
    "conv:module", "conv:module(input=)", "batchnorm", "linear",
    "relu:F.relu", "relu:torch.relu", "relu:method", "relu:module", "relu:F.relu(input=)",
    "relu6:module",
    "avgpool:module", "avgpool:F.avg_pool2d", "avgpool:F.avg_pool2d(kernel_size=)",
    "avgpool:stride1", "avgpool:adaptive", "mean:dims", "mean:negative dims",
    "mean:torch.mean(dim=)", "head:mean",
    "maxpool:module", "maxpool:F.max_pool2d", "maxpool:F.max_pool2d(kernel_size=)",
    "scale:*", "scale:rmul", "scale:/", "scale:torch.mul", "scale:mul(other=)",
    "const:+", "const:buffer", "const:buffer-broadcast", "dropout:module",
    "chunk:method", "chunk:torch.chunk(dim=)", "chunk:split negative dim", "chunk:cat back",
    "shuffle:unflatten", "shuffle:view size(0)",
    "add:+", "add:torch.add", "add:torch.add(other=)", "add:method(other=)", "sub:-",
    "sub:torch.sub(other=)",
    "cat:list", "cat:tuple dim=", "cat:negative dim", "cat:tensors=",
    "flatten:torch.flatten", "flatten:method", "flatten:module", "flatten:view size(0)",
    "flatten:reshape -1",
    # convolutions and linear layers in their other spellings
    "conv:F.conv2d", "conv:F.conv2d(padding=same, groups=)", "conv:padding_mode=reflect",
    "conv:padding_mode=circular", "convT:module", "convT:F.conv_transpose2d",
    "linear:F.linear",
    # ReLUs spelled as clamps
    "relu:clamp(min=0)", "relu:torch.clamp(x, 0, 6)", "relu:torch.clip(x, 0)",
    "relu:clamp_min(0)", "relu:F.hardtanh(x, 0, 6)", "relu:nn.Hardtanh(0, 6)",
    # copies (bursts stay bursts) and resampling
    "upsample:nearest F.interpolate", "upsample:nearest size=", "upsample:nearest module",
    "upsample:bilinear F.interpolate", "upsample:bilinear size=", "upsample:bilinear module",
    "pad:F.pad zeros", "pad:F.pad reflect", "pad:F.pad replicate", "pad:F.pad circular",
    "pad:ZeroPad2d", "pad:ReflectionPad2d",
    "pixel:F.pixel_shuffle", "pixel:PixelShuffle", "pixel:F.pixel_unshuffle",
    "pixel:PixelUnshuffle", "maxpool:after copy",
    # stacking, sums, several outputs
    "stack:sum", "stack:view", "sum:torch.sum(dim=)", "head:sum", "output:dict",
    "output:tuple",
)
SHARED_THRESHOLDS = (1.0, 2.0, 4.0)


class Value:
    """A tensor of the generated forward: its variable name and per-image shape."""

    def __init__(self, name, shape, spikes=False):
        self.name, self.shape, self.spikes = name, tuple(shape), spikes

    @property
    def rank(self):
        return len(self.shape) + 1


class Builder:
    """Collects ``__init__`` lines, ``forward`` lines and the forms used."""

    def __init__(self, rng):
        self.rng = rng
        self.init, self.body, self.forms = [], [], []
        self.count = collections.Counter()
        self.relus = 0

    def new(self, prefix):
        self.count[prefix] += 1
        return f"{prefix}{self.count[prefix]}"

    def module(self, prefix, text):
        name = self.new(prefix)
        self.init.append(f"self.{name} = {text}")
        return f"self.{name}"

    def emit(self, form, expression, shape, spikes=False):
        name = self.new("h")
        self.body.append(f"{name} = {expression}")
        self.forms.append(form)
        return Value(name, shape, spikes)

    def pick(self, options):
        """One of ``[(form, make the call's text, *rest)]``; only the chosen text is made (it
        may declare modules)."""
        form, make, *rest = self.rng.choice(options)
        return (form, make(), *rest)


# --- the grammar: each rule takes (builder, value(s)) and returns a new Value, or None when
# it does not apply to the value's shape -----------------------------------------------------

def conv(b, v):
    if len(v.shape) != 3:
        return None
    c, h, w = v.shape
    out = b.rng.randint(2, 6)
    k = b.rng.choice((1, 3, 3))
    stride = b.rng.choice((1, 1, 2)) if min(h, w) >= 4 else 1
    padding = k // 2
    shape = (out, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1)

    def layer(mode=None):
        return _conv_module(b, c, out, k, stride, padding, mode)

    options = [
        ("conv:module", lambda: f"{layer()}({v.name})"),
        ("conv:module(input=)", lambda: f"{layer()}(input={v.name})"),
        ("conv:F.conv2d", lambda: f"F.conv2d({v.name}, self.{_param(b, (out, c, k, k))}, "
                                  f"self.{_param(b, (out,), 0.1)}, {stride}, {padding})"),
        ("conv:padding_mode=circular", lambda: f"{layer('circular')}({v.name})"),
    ]
    if padding and min(h, w) > padding:  # reflection needs more pixels than it pads
        options.append(("conv:padding_mode=reflect",
                        lambda: f"{layer('reflect')}({v.name})"))
    if c % 2 == 0 and out % 2 == 0:
        options.append(("conv:F.conv2d(padding=same, groups=)",
                        lambda: f"F.conv2d({v.name}, self.{_param(b, (out, c // 2, 3, 3))}, "
                                f"padding='same', groups=2)"))
    options += [("convT", None)] * 2
    form, make = b.rng.choice(options)
    if form == "convT":
        value = conv_transpose(b, v, out)
    else:
        if form == "conv:F.conv2d(padding=same, groups=)":
            shape = (out, h, w)
        value = b.emit(form, make(), shape)
    if b.rng.random() < 0.5:
        norm = b.module("bn", f"nn.BatchNorm2d({out})")
        value = b.emit("batchnorm", f"{norm}({value.name})", value.shape)
    return value


def _conv_module(b, c, out, k, stride, padding, mode=None):
    mode = f", padding_mode={mode!r}" if mode else ""
    return b.module("conv", f"nn.Conv2d({c}, {out}, {k}, stride={stride}, padding={padding}"
                            f"{mode})")


def conv_transpose(b, v, out):
    """A transposed convolution: stride 2 (doubling the size) on small values, else stride 1;
    a module or ``F.conv_transpose2d`` with a parameter weight."""
    c, h, w = v.shape
    k, stride, padding, output_padding, dilation = b.rng.choice(
        [(3, 2, 1, 1, 1), (2, 2, 0, 0, 1), (3, 2, 2, 1, 2)] if max(h, w) <= 4 else
        [(3, 1, 1, 0, 1), (1, 1, 0, 0, 1)])
    groups = 2 if c % 2 == 0 and out % 2 == 0 and b.rng.random() < 0.3 else 1
    shape = (out, *((n - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1
                    for n in (h, w)))
    options = f"stride={stride}, padding={padding}, output_padding={output_padding}, " \
              f"groups={groups}, dilation={dilation}"
    module = f"nn.ConvTranspose2d({c}, {out}, {k}, {options})"
    form, call = b.pick([
        ("convT:module", lambda: f"{b.module('convt', module)}({v.name})"),
        ("convT:F.conv_transpose2d",
         lambda: f"F.conv_transpose2d({v.name}, self.{_param(b, (c, out // groups, k, k))}, "
                 f"self.{_param(b, (out,), 0.1)}, {options})"),
    ])
    return b.emit(form, call, shape)


def _param(b, shape, scale=None):
    """A registered ``nn.Parameter`` of ``shape`` (He-scaled over all but dim 0, unless
    ``scale``), drawn from a seed written into the source (which stays self-contained)."""
    name = b.new("w")
    scale = scale or round((2.0 / max(1, torch.Size(shape[1:]).numel())) ** 0.5, 4)
    seed = b.rng.randrange(10 ** 6)
    b.init.append(f"self.{name} = nn.Parameter(torch.randn({shape}, generator=torch.Generator()"
                  f".manual_seed({seed})) * {scale})")
    return name


def relu(b, v):
    b.relus += 1
    form, call = b.pick([
        ("relu:F.relu", lambda: f"F.relu({v.name})"),
        ("relu:torch.relu", lambda: f"torch.relu({v.name})"),
        ("relu:method", lambda: f"{v.name}.relu()"),
        ("relu:module", lambda: f"{b.module('act', 'nn.ReLU()')}({v.name})"),
        ("relu:F.relu(input=)", lambda: f"F.relu(input={v.name})"),
        ("relu6:module", lambda: f"{b.module('act', 'nn.ReLU6()')}({v.name})"),
        ("relu:clamp(min=0)", lambda: f"{v.name}.clamp(min=0)"),
        ("relu:torch.clamp(x, 0, 6)", lambda: f"torch.clamp({v.name}, 0, 6)"),
        ("relu:torch.clip(x, 0)", lambda: f"torch.clip({v.name}, 0)"),
        ("relu:clamp_min(0)", lambda: f"{v.name}.clamp_min(0)"),
        ("relu:F.hardtanh(x, 0, 6)", lambda: f"F.hardtanh({v.name}, 0, 6)"),
        ("relu:nn.Hardtanh(0, 6)", lambda: f"{b.module('act', 'nn.Hardtanh(0, 6)')}({v.name})"),
    ])
    return b.emit(form, call, v.shape, spikes=True)


def avg_pool(b, v):
    if len(v.shape) != 3 or min(v.shape[1:]) < 2:
        return None
    c, h, w = v.shape
    form, call, shape = b.pick([
        ("avgpool:module", lambda: f"{b.module('pool', 'nn.AvgPool2d(2)')}({v.name})",
         (c, h // 2, w // 2)),
        ("avgpool:F.avg_pool2d", lambda: f"F.avg_pool2d({v.name}, 2)", (c, h // 2, w // 2)),
        ("avgpool:F.avg_pool2d(kernel_size=)", lambda: f"F.avg_pool2d({v.name}, kernel_size=2)",
         (c, h // 2, w // 2)),
        ("avgpool:stride1", lambda: f"F.avg_pool2d({v.name}, 2, stride=1)", (c, h - 1, w - 1)),
        ("avgpool:adaptive", lambda: f"F.adaptive_avg_pool2d({v.name}, 1)", (c, 1, 1)),
        ("mean:dims", lambda: f"{v.name}.mean((2, 3), keepdim=True)", (c, 1, 1)),
        ("mean:negative dims", lambda: f"{v.name}.mean((-1, -2), keepdim=True)", (c, 1, 1)),
        ("mean:torch.mean(dim=)",
         lambda: f"torch.mean({v.name}, dim=(2, 3), keepdim=True)", (c, 1, 1)),
        ("sum:torch.sum(dim=)", lambda: f"torch.sum({v.name}, dim=(2, 3), keepdim=True)",
         (c, 1, 1)),
    ])
    return b.emit(form, call, shape, spikes=False)


def max_pool(b, v):
    if len(v.shape) != 3 or min(v.shape[1:]) < 2:
        return None
    c, h, w = v.shape
    form, call = b.pick([
        ("maxpool:module", lambda: f"{b.module('mpool', 'nn.MaxPool2d(2)')}({v.name})"),
        ("maxpool:F.max_pool2d", lambda: f"F.max_pool2d({v.name}, 2)"),
        ("maxpool:F.max_pool2d(kernel_size=)",
         lambda: f"F.max_pool2d({v.name}, kernel_size=2, stride=2)"),
    ])
    return b.emit(form, call, (c, h // 2, w // 2), spikes=v.spikes)


def scale(b, v):
    form, call = b.pick([
        ("scale:*", lambda: f"{v.name} * 0.5"), ("scale:rmul", lambda: f"2.0 * {v.name}"),
        ("scale:/", lambda: f"{v.name} / 2"),
        ("scale:torch.mul", lambda: f"torch.mul({v.name}, 0.75)"),
        ("scale:mul(other=)", lambda: f"{v.name}.mul(other=1.5)"),
    ])
    return b.emit(form, call, v.shape)


def constant(b, v):
    if len(v.shape) != 3:
        return b.emit("const:+", f"{v.name} + 0.25", v.shape)
    c = v.shape[0]
    form, call = b.pick([
        ("const:+", lambda: f"{v.name} + 0.25"),
        ("const:buffer", lambda: f"{v.name} + self.{_buffer(b, (c, 1, 1))}"),
        ("const:buffer-broadcast", lambda: f"{v.name} + self.{_buffer(b, (1, c, 1, 1))}"),
    ])
    return b.emit(form, call, v.shape)


def _buffer(b, shape):
    name = b.new("buf")
    b.init.append(f"self.register_buffer({name!r}, torch.linspace(-0.5, 0.5, "
                  f"{torch.Size(shape).numel()}).reshape{shape})")
    return name


def dropout(b, v):
    form, call = b.pick([
        ("dropout:module", lambda: f"{b.module('drop', 'nn.Dropout(0.3)')}({v.name})"),
        ("dropout:module", lambda: f"{b.module('drop', 'nn.Dropout(0.3)')}({v.name})"),
        ("dropout:module", lambda: f"{b.module('drop', 'nn.Dropout(0.3)')}({v.name})"),
        ("dropout:F", lambda: f"F.dropout({v.name}, 0.3, training=self.training)"),
    ])
    return b.emit(form, call, v.shape)


def chunk(b, v):
    if len(v.shape) != 3 or v.shape[0] % 2:
        return None
    c, h, w = v.shape
    form, call = b.pick([
        ("chunk:method", lambda: f"{v.name}.chunk(2, 1)[{b.rng.randint(0, 1)}]"),
        ("chunk:torch.chunk(dim=)", lambda: f"torch.chunk({v.name}, 2, dim=1)[1]"),
        ("chunk:split negative dim", lambda: f"{v.name}.split({c // 2}, dim=-3)[0]"),
        ("chunk:cat back", lambda: f"torch.cat({v.name}.chunk(2, 1), 1)"),
    ])
    shape = v.shape if form == "chunk:cat back" else (c // 2, h, w)
    return b.emit(form, call, shape, spikes=v.spikes)


def shuffle(b, v):
    if len(v.shape) != 3 or v.shape[0] % 2:
        return None
    c, h, w = v.shape
    form, call = b.pick([
        ("shuffle:unflatten", lambda: f"{v.name}.unflatten(1, (2, {c // 2})).transpose(1, 2)"
                                      f".contiguous().flatten(1, 2)"),
        ("shuffle:view size(0)",
         lambda: f"{v.name}.view({v.name}.size(0), 2, {c // 2}, {h}, {w}).transpose(1, 2)"
                 f".contiguous().view({v.name}.size(0), {c}, {h}, {w})"),
    ])
    return b.emit(form, call, v.shape, spikes=v.spikes)


def upsample(b, v, earlier=()):
    """Nearest upsampling copies elements (a burst stays a burst: a max pool may follow);
    bilinear resamples (a general train). By 2, or to the size of an earlier value."""
    if len(v.shape) != 3 or max(v.shape[1:]) > 6:
        return None
    c, h, w = v.shape
    sized = [e for e in earlier if len(e.shape) == 3 and e.shape[1:] != (h, w) and
             max(e.shape[1:]) <= 12]
    target = b.rng.choice(sized) if sized else None
    nearest = b.rng.random() < 0.55
    if nearest:
        mode, kw = "nearest", "mode='nearest'"
    else:
        mode, kw = "bilinear", "mode='bilinear', align_corners=False"
    options = [
        (f"upsample:{mode} F.interpolate",
         lambda: f"F.interpolate({v.name}, scale_factor=2, {kw})", (c, 2 * h, 2 * w)),
        (f"upsample:{mode} module",
         lambda: f"{b.module('up', f'nn.Upsample(scale_factor=2, {kw})')}({v.name})",
         (c, 2 * h, 2 * w)),
    ]
    if target is not None:  # to an earlier value's size (larger, or smaller)
        options += [(f"upsample:{mode} size=",
                     lambda: f"F.interpolate({v.name}, size={target.name}.shape[-2:], {kw})",
                     (c, *target.shape[1:]))] * 2
    form, call, shape = b.pick(options)
    value = b.emit(form, call, shape, spikes=v.spikes and nearest)
    return _maybe_max_pool(b, value)


def _maybe_max_pool(b, v):
    """Sometimes a max pool after a copy of a burst (exact: the copy is a burst too)."""
    if v.spikes and min(v.shape[1:]) >= 2 and b.rng.random() < 0.35:
        return b.emit("maxpool:after copy", f"F.max_pool2d({v.name}, 2)",
                      (v.shape[0], v.shape[1] // 2, v.shape[2] // 2), spikes=True)
    return v


def pad(b, v):
    """Padding with zeros or copies of edge values (reflect, replicate, circular)."""
    if len(v.shape) != 3 or max(v.shape[1:]) > 8:
        return None
    c, h, w = v.shape
    left, right, top, bottom = b.rng.choice(((1, 1, 1, 1), (0, 1, 1, 0), (1, 0, 0, 1)))
    pads = f"({left}, {right}, {top}, {bottom})"
    options = [
        ("pad:F.pad zeros", lambda: f"F.pad({v.name}, {pads})"),
        ("pad:F.pad replicate", lambda: f"F.pad({v.name}, {pads}, mode='replicate')"),
        ("pad:F.pad circular", lambda: f"F.pad({v.name}, {pads}, 'circular')"),
        ("pad:ZeroPad2d", lambda: f"{b.module('pad', f'nn.ZeroPad2d({pads})')}({v.name})"),
    ]
    if min(h, w) >= 2:  # reflection needs more pixels than it pads
        options += [
            ("pad:F.pad reflect", lambda: f"F.pad({v.name}, pad={pads}, mode='reflect')"),
            ("pad:ReflectionPad2d",
             lambda: f"{b.module('pad', f'nn.ReflectionPad2d({pads})')}({v.name})"),
        ]
    form, call = b.pick(options)
    value = b.emit(form, call, (c, h + top + bottom, w + left + right), spikes=v.spikes)
    return _maybe_max_pool(b, value)


def pixel(b, v):
    """Pixel unshuffle (even sizes), often shuffled back, or pixel shuffle (channels divisible
    by 4), by 2."""
    if len(v.shape) != 3:
        return None
    c, h, w = v.shape
    shuffle = [("pixel:F.pixel_shuffle", "F.pixel_shuffle({}, 2)"),
               ("pixel:PixelShuffle", "{module}({})")]
    if h % 2 == 0 and w % 2 == 0 and c <= 6:
        form, text = b.rng.choice([("pixel:F.pixel_unshuffle", "F.pixel_unshuffle({}, 2)"),
                                   ("pixel:PixelUnshuffle", "{module}({})")])
        module = b.module("shuf", "nn.PixelUnshuffle(2)") if "{module}" in text else None
        v = b.emit(form, text.format(v.name, module=module), (4 * c, h // 2, w // 2),
                   spikes=v.spikes)
        if b.rng.random() < 0.4:
            return _maybe_max_pool(b, v)
    elif c % 4 != 0 or max(h, w) > 4:
        return None
    c, h, w = v.shape
    form, text = b.rng.choice(shuffle)
    module = b.module("shuf", "nn.PixelShuffle(2)") if "{module}" in text else None
    v = b.emit(form, text.format(v.name, module=module), (c // 4, 2 * h, 2 * w),
               spikes=v.spikes)
    return _maybe_max_pool(b, v)


def stack(b, v, other):
    """``torch.stack`` along a non-batch dim (trains of different lengths are padded with
    zero steps), then summed over that dim or viewed as a concatenation."""
    options = [("stack:sum", lambda: f"torch.stack([{v.name}, {other.name}], 1).sum(1)"),
               ("stack:sum", lambda: f"torch.stack(({v.name}, {other.name}), dim=2)"
                                     f".sum(dim=2)")]
    if len(v.shape) == 3:
        c, h, w = v.shape
        options += [("stack:view", lambda: f"torch.stack([{v.name}, {other.name}], dim=1)"
                                           f".view(-1, {2 * c}, {h}, {w})")] * 2
    form, call = b.pick(options)
    shape = v.shape if form == "stack:sum" else (2 * v.shape[0], *v.shape[1:])
    return b.emit(form, call, shape)


def add(b, v, other):
    form, call = b.pick([
        ("add:+", lambda: f"{v.name} + {other.name}"),
        ("add:torch.add", lambda: f"torch.add({v.name}, {other.name})"),
        ("add:torch.add(other=)", lambda: f"torch.add({v.name}, other={other.name})"),
        ("add:method(other=)", lambda: f"{v.name}.add(other={other.name})"),
        ("sub:-", lambda: f"{v.name} - {other.name}"),
        ("sub:torch.sub(other=)", lambda: f"torch.sub({v.name}, other={other.name})"),
    ])
    return b.emit(form, call, v.shape)


def cat(b, v, other):
    form, call = b.pick([
        ("cat:list", lambda: f"torch.cat([{v.name}, {other.name}], 1)"),
        ("cat:tuple dim=", lambda: f"torch.cat(({v.name}, {other.name}), dim=1)"),
        ("cat:negative dim", lambda: f"torch.cat([{v.name}, {other.name}], -3)"),
        ("cat:tensors=", lambda: f"torch.cat(tensors=[{v.name}, {other.name}], dim=1)"),
    ])
    return b.emit(form, call, (v.shape[0] + other.shape[0], *v.shape[1:]),
                  spikes=v.spikes and other.spikes)


def adversarial(b, v, other):
    """Spellings with no exact spiking counterpart here: they must be refused (or be exact)."""
    options = [("refuse:product of trains", lambda: f"torch.mul({v.name}, other={other.name})"),
               ("refuse:batch size", lambda: f"{v.name} / {v.name}.size(0)")]
    if len(v.shape) == 3:
        options += [("refuse:batch mean", lambda: f"{v.name}.mean(-4, keepdim=True)")]
    if len(v.shape) == 3 and min(v.shape) >= 2:
        options += [("refuse:max_pool3d on 4-D", lambda: f"F.max_pool3d({v.name}, 2)")]
    # the new operations' refusals
    options += [("refuse:clamp(min=-1)", lambda: f"{v.name}.clamp(min=-1)"),
                ("refuse:sum of all dims", lambda: f"{v.name} + torch.sum({v.name})"),
                ("refuse:stack dim=0",
                 lambda: f"torch.stack([{v.name}, {other.name}]).sum(0)")]
    if len(v.shape) == 3:
        options += [("refuse:pad value=1.0",
                     lambda: f"F.pad({v.name}, (1, 1, 1, 1), value=1.0)"),
                    ("refuse:max pool after bilinear",
                     lambda: f"F.max_pool2d(F.interpolate({v.name}, scale_factor=2, "
                             f"mode='bilinear'), 2)")]
    form, call = b.pick(options)
    shape = v.shape
    if form == "refuse:max_pool3d on 4-D":
        shape = (v.shape[0] // 2, v.shape[1] // 2, v.shape[2] // 2)
    elif form == "refuse:pad value=1.0":
        shape = (v.shape[0], v.shape[1] + 2, v.shape[2] + 2)
    return b.emit(form, call, shape)


UNARY = [(conv, 3), (relu, 3), (avg_pool, 5), (max_pool, 2), (scale, 3), (constant, 2),
         (dropout, 1), (chunk, 3), (shuffle, 2), (upsample, 4), (pad, 4), (pixel, 2)]


def head(b, v):
    """Flatten (in one of several spellings) and a linear classifier (``nn.Linear`` or
    ``F.linear`` with parameter weights), sometimes after a spatial mean or sum."""
    if len(v.shape) == 3:
        roll = b.rng.random()
        if roll < 0.3:
            v = b.emit("head:mean", f"{v.name}.mean((2, 3))", (v.shape[0],))
        elif roll < 0.45:
            v = b.emit("head:sum", b.rng.choice((f"{v.name}.sum((2, 3))",
                                                 f"torch.sum({v.name}, dim=(3, 2))")),
                       (v.shape[0],))
    features = int(torch.Size(v.shape).numel())
    if len(v.shape) > 1:
        form, call = b.pick([
            ("flatten:torch.flatten", lambda: f"torch.flatten({v.name}, 1)"),
            ("flatten:method", lambda: f"{v.name}.flatten(1)"),
            ("flatten:module", lambda: f"{b.module('flat', 'nn.Flatten()')}({v.name})"),
            ("flatten:view size(0)", lambda: f"{v.name}.view({v.name}.size(0), -1)"),
            ("flatten:reshape -1", lambda: f"{v.name}.reshape(-1, {features})"),
        ])
        v = b.emit(form, call, (features,))
    classes = b.rng.randint(3, 5)
    if b.rng.random() < 0.25:
        weight, bias = _param(b, (classes, features)), _param(b, (classes,), 0.1)
        return b.emit("linear:F.linear", f"F.linear({v.name}, self.{weight}, self.{bias})",
                      (classes,))
    fc = b.module("fc", f"nn.Linear({features}, {classes})")
    return b.emit("linear", f"{fc}({v.name})", (classes,))


def generate(seed):
    """``(source, input shape, forms, number of ReLU call sites)`` of model ``seed``."""
    rng = random.Random(seed)
    b = Builder(rng)
    size = rng.choice((4, 6, 8))
    channels = rng.randint(1, 3)
    values = [Value("x", (channels, size, size))]
    if rng.random() < 0.3:  # the image straight into a spiking layer
        values.append(relu(b, values[-1]))
    else:
        values.append(relu(b, conv(b, values[-1])))
    for _ in range(rng.randint(2, 7)):
        v = values[-1]
        roll = rng.random()
        new = None
        if roll < 0.35:  # a binary operation with an earlier value of the same shape
            partners = [p for p in values[:-1] if p.shape == v.shape and p.name != "x"]
            if len(v.shape) == 3:
                partners += [p for p in values[:-1] if p.name != "x" and len(p.shape) == 3
                             and p.shape[1:] == v.shape[1:] and p.shape != v.shape]
            if partners:
                other = rng.choice(partners)
                same = other.shape == v.shape
                pick = rng.random()
                if same and pick < 0.5:
                    new = add(b, v, other)
                elif same and pick < 0.7:
                    new = stack(b, v, other)
                elif rng.random() < 0.9:
                    new = cat(b, v, other)
                else:
                    new = adversarial(b, v, other)
        elif roll < 0.39:
            new = adversarial(b, v, v)
        if new is None:
            rules, weights = zip(*UNARY, strict=True)
            rule = rng.choices(rules, weights)[0]
            new = rule(b, v, values[:-1]) if rule is upsample else rule(b, v)
        if new is not None:
            values.append(new)
            if not new.spikes and rng.random() < 0.5:
                values.append(relu(b, new))
    logits = head(b, values[-1])
    result = logits.name
    others = [v for v in values if v.name != "x"]
    roll = rng.random()
    if roll < 0.2 and others:  # several outputs: each is summed over its steps
        other = rng.choice(others)
        if roll < 0.1:
            b.forms.append("output:dict")
            result = f'{{"out": {logits.name}, "aux": {other.name}}}'
        else:
            b.forms.append("output:tuple")
            result = f"({logits.name}, {other.name})"
    lines = ["class Model(nn.Module):", "    def __init__(self):", "        super().__init__()"]
    lines += [f"        {line}" for line in b.init]
    lines += ["", "    def forward(self, x):"] + [f"        {line}" for line in b.body]
    lines += [f"        return {result}"]
    return "\n".join(lines) + "\n", (channels, size, size), b.forms, b.relus


def build(seed):
    """The generated ReLU model, its input batch and the QCFS network with random levels,
    weights and (calibrated or shared) thresholds; ``(source, ann, x, forms)``. Raises
    ValueError where ``qcfsify`` refuses the model."""
    source, shape, forms, relus = generate(seed)
    rng = random.Random(seed + 1)
    namespace = {"nn": nn, "F": F, "torch": torch}
    exec(compile(source, f"<fuzz model {seed}>", "exec"), namespace)
    levels = [rng.choice(LEVELS) for _ in range(relus)]
    ann = models.qcfsify(namespace["Model"](), levels)
    generator = torch.Generator().manual_seed(seed)
    randomize_(ann, generator)
    ann = ann.double().eval()
    batch = rng.randint(1, 3)
    # dyadic inputs: the image itself lands on rounding boundaries where a spiking layer
    # reads it through weightless operations only; thresholds are calibrated (and the output
    # bias centred) on four images, of which the first 1-3 are the batch checked
    calibration = torch.randint(-8, 9, (4, *shape), generator=generator).double() / 4
    calibrate_thresholds_(_FirstOutput(ann), calibration)
    x = calibration[:batch].clone()
    if rng.random() < 0.5:
        shared = rng.choice(SHARED_THRESHOLDS)
        for _, layer in models.qcfs_layers(ann):
            layer.threshold.data.fill_(shared)
    return source, ann, x, forms, levels


class _FirstOutput(nn.Module):
    """``model`` returning only its first output (the logits of a dict or tuple output), for
    the calibration, which centres the classifier's bias on it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return _outputs(self.model(x))[0]


def _outputs(value):
    """The tensors of an output: itself, or a dict's values or a tuple's items, in order."""
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _assert_outputs_close(out, expected):
    """The spiking network's output has the ANN's structure (a tensor, or a dict with the same
    keys in the same order, or a tuple/list), each tensor close to the ANN's: rtol 1e-9 +
    atol 1e-9 x max|ANN output| (see :func:`check`)."""
    if isinstance(expected, dict):
        assert isinstance(out, dict) and list(out) == list(expected), (type(out), list(out))
    elif isinstance(expected, (tuple, list)):
        assert isinstance(out, (tuple, list)) and len(out) == len(expected), type(out)
    else:
        assert torch.is_tensor(out), type(out)
    for actual, wanted in zip(_outputs(out), _outputs(expected), strict=True):
        # the scale is floored at 1e-3: see check
        scale = max(float(wanted.abs().max()), 1e-3)
        torch.testing.assert_close(actual, wanted, rtol=1e-9, atol=1e-9 * scale)


def check(seed):
    """Run the property on model ``seed``: ``("refused", reason)`` or ``("exact", n)``, n the
    spike counts (both paths) that differed at a rounding boundary behind a weighted layer
    (:func:`boundary_neurons`); raises AssertionError (with the model's source) on a wrong
    answer or a crash."""
    source = generate(seed)[0]
    try:
        try:
            source, ann, x, forms, levels = build(seed)
            snn_step = models.convert_to_snn(ann)
            snn_counts = models.convert_to_snn(ann, sim="counts")
        except ValueError as error:
            message = str(error)
            assert "\n" not in message, f"a refusal of more than one line: {message}"
            assert re.search(r"'[^']+'", message), f"a refusal that names nothing: {message}"
            return "refused", _reason(message)
        logits, expected = ann_levels(ann, x)
        # each output: rtol 1e-9 + atol 1e-9 x max|ANN output|: float64 rounding of the
        # per-step sums is ~1e-16 relative to the terms summed. The scale is floored at 1e-3:
        # where the logits nearly vanish (an output centred by the calibration) terms of order
        # 1 cancel and leave ~1e-15 absolute; one spike more or less would move a logit by its
        # amplitude times a weight, far above 1e-12 (and every count is compared exactly).
        timing = {"T_eff": teff(levels, layer_fan_ins(ann))[0],
                  "latency_steps": latency_steps(ann)[0],
                  "latency_pipelined_steps": pipelined_latency_steps(ann),
                  "T_eff_reference": None, "mean_level": sum(levels) / len(levels)}
        (near, upstream), at_boundary = boundary_neurons(ann, x), 0
        for name, snn in (("step", snn_step), ("counts", snn_counts)):
            out, stats = snn.forward_with_stats(x, keep_counts=True)
            assert [s.name for s in stats] == list(expected), name
            differing, perturbed = 0, set()
            for s in stats:
                differ = s.counts.to(torch.int64) != expected[s.name]
                if not upstream[s.name] & perturbed:
                    wrong = int((differ & ~near.get(s.name, torch.zeros_like(differ))).sum())
                    assert wrong == 0, \
                        f"{name}: {s.name}: {wrong} of {s.counts.numel()} counts differ"
                if differ.any():
                    perturbed.add(s.name)
                differing += int(differ.sum())
            at_boundary += differing
            if differing == 0:  # else the logits differ by those spikes, as counted
                _assert_outputs_close(out, logits)
            meter = CostMeter(snn)
            meter.add(x, stats)
            report = snn_cost.build_report(meter, timing)
            spikes = {row["layer"]: row["spikes_per_image"] for row in report["rows"]
                      if row["kind"] == "spiking"}
            # the ANN's levels, or the spikes actually emitted where they differ at a boundary
            assert spikes == {s.name: int(s.counts.sum()) / x.shape[0] for s in stats}, name
            assert_events_cover_zero_skip(report)
        return "exact", at_boundary
    except Exception as error:
        raise AssertionError(f"fuzz model {seed} failed: {type(error).__name__}: {error}\n"
                             f"{traceback.format_exc(limit=3)}\n{source}") from None


def boundary_neurons(ann, x):
    """``(near, upstream)``: where a spike count may differ from the ANN's level, as
    docs/exactness.md states. ``near[layer]`` (bool tensor): neurons whose input depends on a
    convolution, linear layer or BatchNorm (whose per-step sums round differently from the
    ANN's one application) with the ANN's pre-activation divided by the amplitude within 1e-9
    of k + 1/2. ``upstream[layer]``: the spiking layers it depends on -- a count that differs
    at such a boundary changes what every later layer receives. Everything else must equal
    the ANN's level exactly."""
    graph = models.graph.model_graph(ann)
    depends = {}
    for node in graph.nodes:  # forward order
        depends[node.index] = set().union(*(depends[i.index] | (
            {i.name} if i.role == "neuron" else set()) for i in node.inputs))
    upstream = {node.name: depends[node.index] for node in graph.nodes if node.role == "neuron"}
    # which elements of each layer's input depend on a weighted layer: a NaN added to every
    # weighted layer's output marks them (an interpreter of the graph, as the F.conv2d and
    # F.linear calls with parameter weights are no modules to hook)
    weighted = {node.node for node in graph.nodes if node.role in ("weighted", "batchnorm")}

    class Marked(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            return out + float("nan") if node in weighted else out

    inputs, handles = {}, []
    for name, module in models.qcfs_layers(ann):
        def keep(mod, args, name=name):
            inputs.setdefault(name, []).append(args[0].detach().clone())
        handles.append(module.register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            ann(x)
            Marked(ann).run(x)
    finally:
        for handle in handles:
            handle.remove()
    near = {}
    for name, module in models.qcfs_layers(ann):
        clean, marked = inputs[name]
        u = clean / (module.threshold.detach() / module.level)
        near[name] = marked.isnan() & ((u - torch.floor(u) - 0.5).abs() <= 1e-9)
    return near, upstream


def _reason(message):
    """A refusal's reason without the node it names (for counting refusals by reason)."""
    reason = re.sub(r"'[^']*'", "'...'", message)
    reason = re.sub(r"\([^()]*\)", "", reason)
    return " ".join(reason.split())[:90]


def run(count, seed=0, stop_on_failure=False):
    """Check ``count`` models from ``seed``; returns a summary dict."""
    outcome = collections.Counter()
    reasons = collections.Counter()
    accepted_forms = collections.Counter()
    failures = []
    boundary = boundary_models = 0
    started = time.time()
    for index in range(seed, seed + count):
        try:
            verdict, reason = check(index)
        except AssertionError as error:
            failures.append(str(error))
            outcome["wrong"] += 1
            if stop_on_failure:
                break
            continue
        outcome[verdict] += 1
        if verdict == "refused":
            reasons[reason] += 1
        else:
            accepted_forms.update(set(generate(index)[2]))
            boundary += reason
            boundary_models += reason > 0
    return {"models": count, "seed": seed, "seconds": round(time.time() - started, 1),
            "exact": outcome["exact"], "refused": outcome["refused"], "wrong": outcome["wrong"],
            "boundary_differences": boundary, "models_with_boundary_differences": boundary_models,
            "refused_by_reason": dict(reasons.most_common()),
            "accepted_forms": dict(sorted(accepted_forms.items())), "failures": failures}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the summary here")
    parser.add_argument("--show", type=int, default=None, help="print model SEED's source")
    return parser


def main():
    args = get_args_parser().parse_args()
    if args.show is not None:
        print(generate(args.show)[0])
        return
    torch.set_num_threads(1)
    summary = run(args.count, args.seed)
    for failure in summary["failures"][:3]:
        print(failure, file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
