"""A differential fuzzer of the converter: random small ReLU models written as Python source.

Each model is a ``class Model(nn.Module)`` drawn from a grammar of the operations the
converter takes (and some it must refuse), in their module and functional spellings, with
positional and keyword arguments, positive and negative dimensions, broadcast constants and
buffers; it is made a QCFS network by ``models.qcfsify`` with random levels 1-8 (3, 5 and 6
included), given random weights, thresholds calibrated to keep it alive and, in half of the
models, one shared round threshold for every layer (ties: values on rounding boundaries).

The property (:func:`check`): the model is refused at conversion with a one-line
``ValueError`` that names what it refuses, or, on both simulation paths, every neuron's spike
count equals its ANN level, the logits agree with the ANN's, and the cost report, T_eff and
the latencies compute, with the meter's spike counts equal to the ANN's levels.

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
from helpers import ann_levels, calibrate_thresholds_, randomize_  # noqa: E402
from models.timing import (latency_steps, layer_fan_ins, pipelined_latency_steps,  # noqa: E402
                           teff)

LEVELS = (1, 2, 3, 4, 5, 6, 7, 8)
# Every spelling the grammar writes that the converter takes (the test asserts each occurs in
# accepted models); the grammar also writes "refuse:*" forms and F.dropout with
# training=self.training, which must be refused.
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
    layer = b.module("conv", f"nn.Conv2d({c}, {out}, {k}, stride={stride}, padding={padding})")
    shape = (out, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1)
    form, call = b.pick([("conv:module", lambda: f"{layer}({v.name})"),
                         ("conv:module(input=)", lambda: f"{layer}(input={v.name})")])
    value = b.emit(form, call, shape)
    if b.rng.random() < 0.5:
        norm = b.module("bn", f"nn.BatchNorm2d({out})")
        value = b.emit("batchnorm", f"{norm}({value.name})", shape)
    return value


def relu(b, v):
    b.relus += 1
    form, call = b.pick([
        ("relu:F.relu", lambda: f"F.relu({v.name})"),
        ("relu:torch.relu", lambda: f"torch.relu({v.name})"),
        ("relu:method", lambda: f"{v.name}.relu()"),
        ("relu:module", lambda: f"{b.module('act', 'nn.ReLU()')}({v.name})"),
        ("relu:F.relu(input=)", lambda: f"F.relu(input={v.name})"),
        ("relu6:module", lambda: f"{b.module('act', 'nn.ReLU6()')}({v.name})"),
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
    form, call = b.pick(options)
    shape = v.shape
    if form == "refuse:max_pool3d on 4-D":
        shape = (v.shape[0] // 2, v.shape[1] // 2, v.shape[2] // 2)
    return b.emit(form, call, shape)


UNARY = [(conv, 4), (relu, 5), (avg_pool, 5), (max_pool, 2), (scale, 2), (constant, 2),
         (dropout, 1), (chunk, 3), (shuffle, 2)]


def head(b, v):
    """Flatten (in one of several spellings) and a Linear classifier."""
    if len(v.shape) == 3 and b.rng.random() < 0.3:
        v = b.emit("head:mean", f"{v.name}.mean((2, 3))", (v.shape[0],))
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
                if other.shape == v.shape and rng.random() < 0.6:
                    new = add(b, v, other)
                elif rng.random() < 0.9:
                    new = cat(b, v, other)
                else:
                    new = adversarial(b, v, other)
        elif roll < 0.39:
            new = adversarial(b, v, v)
        if new is None:
            rules, weights = zip(*UNARY, strict=True)
            new = rng.choices(rules, weights)[0](b, v)
        if new is not None:
            values.append(new)
            if not new.spikes and rng.random() < 0.5:
                values.append(relu(b, new))
    head(b, values[-1])
    lines = ["class Model(nn.Module):", "    def __init__(self):", "        super().__init__()"]
    lines += [f"        {line}" for line in b.init]
    lines += ["", "    def forward(self, x):"] + [f"        {line}" for line in b.body]
    lines += [f"        return {b.body[-1].split(' = ')[0]}"]
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
    calibrate_thresholds_(ann, calibration)
    x = calibration[:batch].clone()
    if rng.random() < 0.5:
        shared = rng.choice(SHARED_THRESHOLDS)
        for _, layer in models.qcfs_layers(ann):
            layer.threshold.data.fill_(shared)
    return source, ann, x, forms, levels


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
        # rtol 1e-9 + atol 1e-9 x max|ANN logit|: float64 rounding of the per-step sums is
        # ~1e-16 relative to the terms summed. The scale is floored at 1e-3: where the logits
        # nearly vanish (an output centred by the calibration) terms of order 1 cancel and
        # leave ~1e-15 absolute; one spike more or less would move a logit by its amplitude
        # times a weight, far above 1e-12 (and every count is compared exactly anyway).
        scale = max(float(logits.abs().max()), 1e-3)
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
                torch.testing.assert_close(out, logits, rtol=1e-9, atol=1e-9 * scale)
            meter = CostMeter(snn)
            meter.add(x, stats)
            report = snn_cost.build_report(meter, timing)
            spikes = {row["layer"]: row["spikes_per_image"] for row in report["rows"]
                      if row["kind"] == "spiking"}
            # the ANN's levels, or the spikes actually emitted where they differ at a boundary
            assert spikes == {s.name: int(s.counts.sum()) / x.shape[0] for s in stats}, name
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
    # weighted layer's output marks them
    weighted = [node.module for node in graph.nodes
                if node.role in ("weighted", "batchnorm") and node.module is not None]
    inputs, handles = {}, []
    for name, module in models.qcfs_layers(ann):
        def keep(mod, args, name=name):
            inputs.setdefault(name, []).append(args[0].detach().clone())
        handles.append(module.register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            ann(x)
            handles += [m.register_forward_hook(lambda m, a, out: out + float("nan"))
                        for m in weighted]
            ann(x)
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
