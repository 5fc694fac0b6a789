"""Speed and memory of the spiking simulation, the counts path and QCFS training.

For each architecture and level configuration it measures, in one process on one device:

- ANN evaluation, SNN step simulation and counts path throughput (images/s);
- the ideal ratio R = sum_l T_in,l * MACs_l / sum_l MACs_l (the convolution work a PASCAL
  network cannot avoid, relative to the ANN) and the simulator overhead
  SNN time / (ANN time * R);
- a QCFS training step's time over the same network's with ReLU;
- peak memory of ANN and SNN evaluation, each in a fresh subprocess: peak RSS minus the RSS
  once model and input are loaded (on CUDA: torch.cuda.max_memory_allocated over the
  allocation after loading).

Timings: one warm-up run, then ``--reps`` repetitions with the variants interleaved; the
median is reported with the spread (min-max) of the repetitions. Networks have random
weights made alive: every QCFS threshold is set to a high percentile of its input, so layers
are neither silent nor saturated.

    python3 benchmarks/bench_snn.py                      # vgg16 and resnet18, batch 32
    python3 benchmarks/bench_snn.py --json benchmarks/results/cpu-2core.json --threads 2
    python3 benchmarks/bench_snn.py --archs tv:resnet50 --levels uniform4   # 64x64 inputs
    python3 benchmarks/bench_snn.py --against 9782d84 --archs vgg16 --levels reference
    python3 benchmarks/bench_snn.py --train-variants --against f9cafbe --archs vgg16,resnet18,resnet20 \
        --batch 128 --reps 15 --loss-steps 0 --json benchmarks/results/train-cpu-2core-allocator.json

``--train-variants`` times training steps only, one row per architecture: ReLU eager, QCFS
eager as COMMIT's models package computes it (``--against``; the eager code before the
fused kernel), QCFS eager (the fused kernel on the CPU), these three NCHW; where
``engine.fit`` trains channels-last (the CPU), ReLU and fused QCFS in that layout too
(``*_cl``); QCFS and ReLU through torch.compile, in the layout training uses; on the CPU also
two processes of their own (:class:`StepChild`): COMMIT's QCFS with glibc's allocator
settings (``process_before_glibc``, the step as it was before this version) and this
version's as ``engine.fit`` takes it (``process_fused``). Each
repetition is one SGD step of every variant in turn (one process steps at a time), after
two warm-up steps (the compiled variants compile in their first). It also trains the eager and the
compiled QCFS network ``--loss-steps`` steps from the same weights on the same batches
and reports the relative difference of the last losses (ReLU likewise), beside what float32
rounding alone does to the eager run and the same comparison in float64
(:func:`loss_comparison`; ``--loss-only`` runs it without the timing).

On the CPU the process keeps freed memory (:mod:`allocator`), as ``engine.fit`` and
``main_test.py`` do; ``--glibc-defaults`` times it with glibc's own settings.

``--against COMMIT`` extracts that commit's ``models`` package (``git archive``) into a
temporary folder, imports it under another name and times its converter's step simulation
and counts path next to this one's, interleaved, on the same weights.
"""
import argparse
import copy
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402  (needs the repository root on sys.path)
from engine import training_memory_format  # noqa: E402
from allocator import keep_freed_memory  # noqa: E402
from models.chunking import Segment  # noqa: E402
from models.snn_layers import WeightedLayer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Per-layer levels of the published reference code.
REFERENCE_LEVELS = {
    "vgg16": [8, 4, 4, 1, 4, 4, 1, 1, 1, 1, 1, 4, 8, 8, 8],
    "resnet18": [4, 4, 4, 1, 4, 4, 4, 1, 4, 1, 1, 1, 1, 1, 1, 1, 4],
}
UNIFORM = {"uniform4": 4, "uniform8": 8, "uniform16": 16}
MEMORY_LEVELS = "uniform16"  # the configuration of the memory acceptance check
NUM_CLASSES = 10
IMAGE_SIZE = 32  # CIFAR variant of the built-in architectures
TORCHVISION_IMAGE_SIZE = 64  # tv:NAME architectures (alexnet needs at least 63)


def image_size(arch, args=None):
    if args is not None and getattr(args, "image_size", None):
        return args.image_size
    return TORCHVISION_IMAGE_SIZE if models.is_torchvision_arch(arch) else IMAGE_SIZE


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="vgg16,resnet18",
                        help="comma-separated architectures (default: vgg16,resnet18)")
    parser.add_argument("--levels", default="reference,uniform4,uniform8,uniform16",
                        help="comma-separated level configurations among reference, uniform4, "
                             "uniform8, uniform16 (default: all; reference only where the "
                             "spec gives one)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default: 32)")
    parser.add_argument("--reps", type=int, default=5,
                        help="timed repetitions per measurement (default: 5)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda[:N] (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's default for this machine)")
    parser.add_argument("--step-budget", type=int, default=None,
                        help="SpikingNetwork step_budget: each layer of the step simulator "
                             "runs in chunks whose tensors stay within the ANN's largest layer "
                             "at this many images (default: the batch size)")
    parser.add_argument("--compare-whole-chunks", action="store_true",
                        help="also time the step simulator with the whole network in chunks "
                             "of batch // max level images (the rule before segment plans)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input height and width (default: 32 for the built-in "
                             "architectures, 64 for tv:NAME)")
    parser.add_argument("--against", default=None, metavar="COMMIT",
                        help="also time the step simulation and the counts path of the models "
                             "package of this git commit, interleaved with this one's "
                             "(default: off)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    parser.add_argument("--train-variants", action="store_true",
                        help="time training steps only: ReLU and QCFS, eager and compiled "
                             "(see above); --against COMMIT adds that commit's eager QCFS")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="on the CPU: leave glibc's allocator as it is (default: keep "
                             "freed memory, as training and main_test.py do)")
    parser.add_argument("--loss-steps", type=int, default=20,
                        help="with --train-variants: SGD steps of the eager-compiled loss "
                             "comparison (0: skip it; default: 20)")
    parser.add_argument("--ulp-runs", type=int, default=4,
                        help="with the loss comparison: eager runs from weights moved by one "
                             "ulp, the float32 rounding reference (default: 4)")
    parser.add_argument("--float64-batch", type=int, default=16,
                        help="with the loss comparison: images per batch of its float64 "
                             "repetition (0: skip it; default: 16)")
    parser.add_argument("--loss-only", action="store_true",
                        help="the --train-variants loss comparison only, no timing")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the results as JSON to FILE (default: no file)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke run: batch 4, 1 repetition, uniform4 and uniform16 "
                             "only, memory measured on the uniform16 row only")
    # internal: one peak-memory measurement in a fresh process (see measure_peak_memory)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    # internal: one variant's training steps in a process of its own (StepChild)
    parser.add_argument("--step-child", default=None, help=argparse.SUPPRESS)
    return parser


# --- models -----------------------------------------------------------------------------------

def level_configs(arch, names):
    """``[(name, levels), ...]`` for ``arch``; "reference" only where the spec has a list."""
    configs = []
    for name in names:
        if name == "reference":
            if arch in REFERENCE_LEVELS:
                configs.append((name, REFERENCE_LEVELS[arch]))
        elif name in UNIFORM:
            configs.append((name, UNIFORM[name]))
        else:
            raise ValueError(f"unknown level configuration {name!r}; choose among reference, "
                             f"{', '.join(UNIFORM)}")
    return configs


def relu_twin(arch):
    """The same architecture with ReLU activations (the arch functions take ``act_layer``;
    a torchvision model is its own ReLU twin)."""
    if models.is_torchvision_arch(arch):
        import torchvision
        name = arch[len(models.TORCHVISION_PREFIX):]
        extra = {"aux_logits": False, "init_weights": True} if name in (
            "googlenet", "inception_v3") else {}
        return torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES,
                                            **extra)
    for module in (models.vgg, models.resnet):
        build = getattr(module, arch, None)
        if build is not None:
            return build(NUM_CLASSES, "cifar", nn.ReLU)
    raise ValueError(f"no ReLU twin for {arch!r}")


@torch.no_grad()
def make_alive_(model, x, percentile=0.99):
    """Set each QCFS threshold, in forward order, to a high percentile of its own input."""
    def hook(module, args):
        values = args[0].detach().flatten().float()
        if values.numel() > 200_000:
            values = values[torch.randperm(values.numel(), device=values.device)[:200_000]]
        positive = values[values > 0]
        source = positive if positive.numel() else values.abs()
        module.threshold.fill_(max(float(torch.quantile(source, percentile)), 1e-3))

    handles = [m.register_forward_pre_hook(hook) for _, m in models.qcfs_layers(model)]
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return model


def build_model(arch, levels, device, seed, size=IMAGE_SIZE):
    torch.manual_seed(seed)
    model = models.create_model(arch, num_classes=NUM_CLASSES, levels=levels).to(device)
    x = torch.randn(8, 3, size, size, device=device)
    return make_alive_(model, x)


@torch.no_grad()
def ideal_ratio(snn, x):
    """R = sum_l T_in,l MACs_l / sum_l MACs_l over the conv/linear layers.

    From the converted network's graph: T_in, the number of steps each weighted layer is
    applied to, is its input's static step count; MACs per image are the output size (from a
    one-image probe) times the weights of one output (``weight[0]``: in_channels/groups *
    kernel, or in_features).
    """
    values = snn.probe(x[:1])
    weighted = [(op, snn.layers[op.target].layer) for op in snn.ops
                if isinstance(op.target, str) and
                isinstance(getattr(snn.layers, op.target, None), WeightedLayer)]
    macs = {op.index: values[op.index][0].numel() * layer.weight[0].numel()
            for op, layer in weighted}
    steps = {op.index: snn.ops[op.inputs[0]].num_steps for op, _ in weighted}
    return sum(steps[i] * m for i, m in macs.items()) / sum(macs.values())


# --- timing -----------------------------------------------------------------------------------

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(functions, reps, device):
    """``{name: [seconds, ...]}``: one warm-up call each, then ``reps`` interleaved rounds."""
    for f in functions.values():
        f()
    synchronize(device)
    times = {name: [] for name in functions}
    for _ in range(reps):
        for name, f in functions.items():
            synchronize(device)
            start = time.perf_counter()
            measured = f()  # a function that runs elsewhere returns its own time
            synchronize(device)
            times[name].append(measured if isinstance(measured, float)
                               else time.perf_counter() - start)
    return times


def spread(values):
    return [min(values), max(values)]


def training_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


TRAIN_STEPS_PER_REP = 3  # a single step is short enough for scheduler noise to dominate


def time_training(arch, model, x, reps, device):
    """QCFS training step time over the ReLU twin's (same weights, same batch).

    Each repetition times ``TRAIN_STEPS_PER_REP`` consecutive SGD steps of each network.
    """
    qcfs = models.create_model(arch, num_classes=NUM_CLASSES, levels=models.get_levels(model))
    qcfs.load_state_dict(model.state_dict())
    relu = relu_twin(arch)
    relu.load_state_dict({k: v for k, v in model.state_dict().items()
                          if not k.endswith(".threshold")})
    y = torch.randint(0, NUM_CLASSES, (x.shape[0],), device=device)
    steps = {}
    for name, net in (("qcfs", qcfs), ("relu", relu)):
        net.to(device).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
        def run(net=net, optimizer=optimizer):
            for _ in range(TRAIN_STEPS_PER_REP):
                training_step(net, optimizer, x, y)
        steps[name] = run
    times = time_interleaved(steps, reps, device)
    ratios = [q / r for q, r in zip(times["qcfs"], times["relu"], strict=True)]
    return statistics.median(times["qcfs"]) / statistics.median(times["relu"]), spread(ratios)


# --- training variants ------------------------------------------------------------------------

def _train_batches(count, batch, size, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=gen).to(device),
             torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device))
            for _ in range(count)]


def _losses(model, batches, steps):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses = []
    for step in range(steps):
        x, y = batches[step % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


class StepChild:
    """One network's training step in a process of its own, stepped from this one: QCFS as
    COMMIT computed it with glibc's allocator settings (``"before_glibc"``, the step before
    this version) or this version's QCFS with the allocator settings and memory layout
    training uses (``"fused"``). The processes take turns (one steps at a time) and each step
    is timed where it runs."""

    def __init__(self, variant, arch, state_path, args):
        spec = json.dumps({"variant": variant, "arch": arch, "state": state_path,
                           "size": image_size(arch, args), "batch": args.batch,
                           "seed": args.seed, "threads": args.threads, "against": args.against})
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--step-child", spec],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self):
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("a --step-child process ended early")
        return float(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def step_child(spec):
    """Run in a fresh process: one training step per line "step" on stdin, its seconds on
    stdout (see :class:`StepChild`)."""
    spec = json.loads(spec)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if spec["variant"] == "fused":
        keep_freed_memory()
        model = models.create_model(spec["arch"], num_classes=NUM_CLASSES, levels=4)
    else:
        with tempfile.TemporaryDirectory() as folder:
            old_models = import_models_of_commit(spec["against"], folder)
            model = old_models.create_model(spec["arch"], num_classes=NUM_CLASSES, levels=4)
    model.load_state_dict(torch.load(spec["state"], weights_only=True))
    model.train()
    x, y = _train_batches(1, spec["batch"], spec["size"], torch.device("cpu"), spec["seed"])[0]
    if spec["variant"] == "fused":  # in the layout engine.fit trains it in
        layout = training_memory_format("auto", model, torch.device("cpu"))
        model.to(memory_format=layout)
        x = x.contiguous(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        training_step(model, optimizer, x, y)
        print(time.perf_counter() - start, flush=True)


def train_networks(arch, args, device):
    """The QCFS network (L = 4, alive) and its ReLU twin with the same weights."""
    model = build_model(arch, 4, device, args.seed, image_size(arch, args)).train()
    relu = relu_twin(arch).to(device)
    relu.load_state_dict({k: v for k, v in model.state_dict().items()
                          if not k.endswith(".threshold")})
    return model, relu


def _relative(value, reference):
    return abs(value - reference) / abs(reference)


def nudged_by_one_ulp(model, seed):
    """A copy of ``model`` with every element of every parameter moved to the next float of
    its dtype up or down (each direction drawn with ``seed``): a change the size of one
    rounding of the weights themselves."""
    nudged = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in nudged.parameters():
            up = (torch.rand(p.shape, generator=gen) < 0.5).to(p.device)
            p.copy_(torch.nextafter(p, torch.where(up, torch.inf, -torch.inf).to(p.dtype)))
    return nudged


def _compiled_losses(model, batches, steps):
    torch._dynamo.reset()  # a fresh compilation: no earlier graph's guards or cache limit
    return _losses(torch.compile(model), batches, steps)


def loss_comparison(arch, model, relu, args, device):
    """Compiled against eager training: ``--loss-steps`` SGD steps of each from the same
    weights on the same four batches, and the relative difference of the last losses (QCFS
    and ReLU). Three measurements say what that difference means: how far float32 rounding
    alone moves the eager run -- the same steps from weights moved by one ulp
    (``--ulp-runs`` draws), and on another number of threads (1, or 2 where the run has
    one), which sums the convolutions' weight gradients in another order -- and the
    compiled-eager difference in float64 (``--float64-batch`` images per batch), where
    rounding is 2^29 times finer. Every run trains in the layout ``engine.fit`` would."""
    layout = training_memory_format("auto", model, device)
    batches = [(x.contiguous(memory_format=layout), y) for x, y in
               _train_batches(4, args.batch, image_size(arch, args), device, args.seed + 1)]
    row = {"loss_layout": _layout_name(layout)}
    for kind, net in (("qcfs", model), ("relu", relu)):
        net = copy.deepcopy(net).to(memory_format=layout)
        eager = _losses(copy.deepcopy(net), batches, args.loss_steps)
        compiled = _compiled_losses(copy.deepcopy(net), batches, args.loss_steps)
        row[f"{kind}_loss_eager"], row[f"{kind}_loss_compiled"] = eager[-1], compiled[-1]
        row[f"{kind}_loss_rel_diff"] = _relative(compiled[-1], eager[-1])
        row[f"{kind}_first_differing_step"] = next(
            (i + 1 for i, (a, b) in enumerate(zip(eager, compiled)) if a != b), None)
        row[f"{kind}_loss_ulp_rel_diffs"] = [
            _relative(_losses(nudged_by_one_ulp(net, seed), batches, args.loss_steps)[-1],
                      eager[-1]) for seed in range(args.ulp_runs)]
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if threads > 1 else 2)  # other partial sums, same code
        try:
            other = _losses(copy.deepcopy(net), batches, args.loss_steps)
        finally:
            torch.set_num_threads(threads)
        row[f"{kind}_loss_threads_rel_diff"] = _relative(other[-1], eager[-1])
        if args.float64_batch:
            wide = [(x[:args.float64_batch].double().contiguous(memory_format=layout),
                     y[:args.float64_batch]) for x, y in batches]
            net64 = copy.deepcopy(net).double()
            eager64 = _losses(copy.deepcopy(net64), wide, args.loss_steps)
            compiled64 = _compiled_losses(copy.deepcopy(net64), wide, args.loss_steps)
            row[f"{kind}_float64_loss_rel_diff"] = _relative(compiled64[-1], eager64[-1])
    return row


def _layout_name(layout):
    return "channels_last" if layout == torch.channels_last else "contiguous"


def train_variants_row(arch, args, device, old_models):
    """One architecture's training-step times: ReLU and QCFS, eager and compiled (same
    weights, same batch), interleaved; and the eager-compiled loss comparison. Where
    ``engine.fit`` trains in the channels-last layout (the CPU), eager QCFS and ReLU are timed
    in both layouts (``*_cl``: channels-last) and the compiled variants in channels-last."""
    size = image_size(arch, args)
    model, relu = train_networks(arch, args, device)
    layout = training_memory_format("auto", model, device)
    x, y = _train_batches(1, args.batch, size, device, args.seed)[0]
    inputs = {}
    variants = {"relu_eager": relu, "qcfs_fused": model}
    if layout == torch.channels_last:
        for name, net in (("relu_eager_cl", relu), ("qcfs_fused_cl", model)):
            variants[name] = copy.deepcopy(net).to(memory_format=layout)
            inputs[name] = x.contiguous(memory_format=layout)
    if old_models is not None:
        old = old_models.create_model(arch, num_classes=NUM_CLASSES, levels=4).to(device)
        old.load_state_dict(model.state_dict())
        variants["qcfs_before"] = old
    children = {}
    if old_models is not None and device.type == "cpu" and not args.glibc_defaults:
        with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as handle:
            torch.save(model.state_dict(), handle)
        children = {f"process_{variant}": StepChild(variant, arch, handle.name, args)
                    for variant in ("before_glibc", "fused")}
    started = time.perf_counter()
    for kind, net in (("qcfs", model), ("relu", relu)):
        variants[f"{kind}_compiled"] = torch.compile(copy.deepcopy(net).to(memory_format=layout))
        inputs[f"{kind}_compiled"] = x.contiguous(memory_format=layout)
    steps = {}
    for name, net in variants.items():
        net.train()
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
        steps[name] = (lambda net=net, optimizer=optimizer, x=inputs.get(name, x):
                       training_step(net, optimizer, x, y))
    steps.update(children)
    compile_started = time.perf_counter()
    for name in ("qcfs_compiled", "relu_compiled"):
        steps[name]()  # compiles
    compile_seconds = time.perf_counter() - compile_started
    try:
        times = time_interleaved(steps, args.reps, device)  # its own warm-up call: the second
    finally:
        for child in children.values():
            child.close()
        if children:
            os.unlink(handle.name)
    median = {name: statistics.median(t) for name, t in times.items()}
    # the eager step as engine.fit takes it: the fused kernel in its layout
    trained = "qcfs_fused_cl" if "qcfs_fused_cl" in median else "qcfs_fused"
    relu_trained = "relu_eager_cl" if "relu_eager_cl" in median else "relu_eager"
    row = {"arch": arch, "batch": args.batch, "reps": args.reps,
           "layout": _layout_name(layout),
           "seconds": median, "spread": {name: spread(t) for name, t in times.items()},
           "compile_seconds_first_steps": round(compile_seconds, 1),
           "qcfs_fused_over_relu": median["qcfs_fused"] / median["relu_eager"],
           "qcfs_trained_over_relu_trained": median[trained] / median[relu_trained],
           "qcfs_compiled_over_relu_compiled": median["qcfs_compiled"] / median["relu_compiled"],
           "qcfs_compiled_over_trained": median["qcfs_compiled"] / median[trained]}
    if "qcfs_before" in median:
        row["qcfs_fused_over_before"] = median["qcfs_fused"] / median["qcfs_before"]
        row["qcfs_trained_over_before"] = median[trained] / median["qcfs_before"]
        row["qcfs_before_over_relu"] = median["qcfs_before"] / median["relu_eager"]
    if children:
        row["process_fused_over_before_glibc"] = (median["process_fused"]
                                                  / median["process_before_glibc"])
    if args.loss_steps:
        row.update(loss_comparison(arch, model, relu, args, device))
    row["wall_seconds"] = round(time.perf_counter() - started, 1)
    return row


def print_train_table(result):
    timed = [row for row in result["rows"] if "seconds" in row]
    print(f"device: {result['device']}; torch threads: {result['threads']}; "
          f"torch {result['torch']}; "
          + (f"training steps, median of {result['reps']} (one step each); " if timed else "")
          + f"load average before/after: {result['load_average_before']} / "
          f"{result['load_average_after']}")
    names = ["relu_eager", "qcfs_before", "qcfs_fused", "relu_eager_cl", "qcfs_fused_cl",
             "qcfs_compiled", "relu_compiled", "process_before_glibc", "process_fused"]
    ratios = [("fused/before", "qcfs_fused_over_before"),
              ("trained/before", "qcfs_trained_over_before"),
              ("process fused/before", "process_fused_over_before_glibc"),
              ("fused/ReLU", "qcfs_fused_over_relu"),
              ("trained Q/R", "qcfs_trained_over_relu_trained"),
              ("comp Q/R", "qcfs_compiled_over_relu_compiled"),
              ("comp/trained", "qcfs_compiled_over_trained")]
    if timed:
        print("trained: the eager fused step in the layout engine.fit trains in "
              "(channels-last: *_cl)")
        print(f"{'arch':<9} {'batch':>5} " + " ".join(f"{n:>13}" for n in names)
              + "".join(f" {label:>{max(len(label), 8)}}" for label, _ in ratios))
    for row in timed:
        sec = row["seconds"]
        print(f"{row['arch']:<9} {row['batch']:>5} "
              + " ".join(f"{_fmt(sec.get(n), '>13.3f')}" for n in names)
              + "".join(f" {_fmt(row.get(key), f'>{max(len(label), 8)}.3f')}"
                        for label, key in ratios))
    for row in result["rows"]:
        if "qcfs_loss_rel_diff" not in row:
            continue
        print(f"{row['arch']}: loss after {result['loss_steps']} steps, relative difference "
              "to eager float32 (compiled | eager from weights moved by one ulp | eager on "
              "another number of threads | float64 compiled to float64 eager)")
        for kind in ("qcfs", "relu"):
            ulp = ", ".join(f"{d:.2e}" for d in row[f"{kind}_loss_ulp_rel_diffs"])
            print(f"  {kind:<5} {row[f'{kind}_loss_rel_diff']:.2e} (first differing step "
                  f"{row[f'{kind}_first_differing_step']}) | {ulp or '-'} | "
                  f"{row[f'{kind}_loss_threads_rel_diff']:.2e} | "
                  f"{_fmt(row.get(f'{kind}_float64_loss_rel_diff'), '.2e')}")


# --- memory -----------------------------------------------------------------------------------

def _status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def memory_child(spec):
    """Run in a fresh process: load, convert, then one evaluation; print the peak in MB."""
    spec = json.loads(spec)
    device = torch.device(spec["device"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model = models.create_model(spec["arch"], num_classes=NUM_CLASSES, levels=spec["levels"])
    model.load_state_dict(torch.load(spec["state"], weights_only=True))
    model = model.to(device).eval()
    net = model if spec["mode"] == "ann" else models.convert_to_snn(
        model, sim=spec["mode"], step_budget=spec["step_budget"])
    del model
    x = torch.randn(spec["batch"], 3, spec["size"], spec["size"], device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            net(x)
        torch.cuda.synchronize(device)
        peak, method = (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda"
    else:
        base = _status_mb("VmRSS")
        try:  # reset the kernel's peak-RSS counter to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            method = "rss"
        except OSError:
            method = "rss-peak-includes-loading"
        with torch.inference_mode():
            net(x)
        peak = _status_mb("VmHWM") - base
    print(json.dumps({"peak_mb": peak, "method": method}))


def measure_peak_memory(arch, levels, mode, batch, state_path, device, threads,
                        step_budget=None, size=IMAGE_SIZE):
    spec = json.dumps({"arch": arch, "levels": levels, "mode": mode, "batch": batch,
                       "state": state_path, "device": str(device), "threads": threads,
                       "step_budget": step_budget, "size": size})
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", spec],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- one row ----------------------------------------------------------------------------------

def bench_row(arch, config, levels, args, device, measure_memory, old_models=None):
    size = image_size(arch, args)
    model = build_model(arch, levels, device, args.seed, size)
    x = torch.randn(args.batch, 3, size, size, device=device)
    step_snn = models.convert_to_snn(model, step_budget=args.step_budget)
    counts_snn = models.convert_to_snn(model, sim="counts")
    ratio = ideal_ratio(step_snn, x)

    def ann():
        with torch.inference_mode():
            model(x)

    functions = {"ann": ann, "snn": lambda: step_snn(x), "counts": lambda: counts_snn(x)}
    if args.compare_whole_chunks:
        whole_chunk = max(1, args.batch // step_snn.max_level)
        whole_snn = models.convert_to_snn(model, step_budget=args.step_budget)
        # the whole network in chunks of batch // longest train: the rule before segment
        # plans, set as this network's plan for x's shape
        whole_snn._plans[(args.batch, tuple(x.shape[1:]), x.dtype, x.device,
                          args.step_budget)] = [Segment(0, len(whole_snn.ops), whole_chunk)]
        functions["whole_chunks"] = lambda: whole_snn(x)
    if old_models is not None:
        old_ann = old_models.create_model(arch, num_classes=NUM_CLASSES, levels=levels)
        old_ann.load_state_dict(model.state_dict())
        old_snn = old_models.convert_to_snn(old_ann.to(device).eval(),
                                            step_budget=args.step_budget)
        old_counts = old_models.convert_to_snn(old_ann.to(device).eval(), sim="counts")
        functions["old_snn"] = lambda: old_snn(x)
        functions["old_counts"] = lambda: old_counts(x)
        with torch.inference_mode():
            agree = torch.equal(old_snn(x).argmax(1), step_snn(x).argmax(1)) and \
                torch.equal(old_counts(x).argmax(1), counts_snn(x).argmax(1))
    times = time_interleaved(functions, args.reps, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    overheads = [s / (a * ratio) for s, a in zip(times["snn"], times["ann"], strict=True)]
    counts_ratios = [c / a for c, a in zip(times["counts"], times["ann"], strict=True)]
    row = {
        "arch": arch, "levels": config, "batch": args.batch,
        "ann_img_s": args.batch / median["ann"],
        "snn_img_s": args.batch / median["snn"],
        "counts_img_s": args.batch / median["counts"],
        "ideal_ratio": ratio,
        "overhead": median["snn"] / (median["ann"] * ratio),
        "train_qcfs_over_relu": None,
        "peak_mem_ann_mb": None, "peak_mem_snn_mb": None,
        # extras: the per-layer levels, spreads (min-max over repetitions), derived ratios
        "levels_list": models.get_levels(model),
        "counts_over_ann": median["counts"] / median["ann"],
        "counts_over_ann_of_minima": min(times["counts"]) / min(times["ann"]),
        "seconds": {name: {"median": median[name], "spread": spread(t)}
                    for name, t in times.items()},
        "overhead_spread": spread(overheads),
        "counts_over_ann_spread": spread(counts_ratios),
        "snn_chunk_images": [chunk for _, chunk in step_snn.chunk_plan(x)],
        "image_size": size,
    }
    if old_models is not None:
        old_ratios = [n / o for n, o in zip(times["snn"], times["old_snn"], strict=True)]
        row["old_snn_img_s"] = args.batch / median["old_snn"]
        row["snn_new_over_old"] = median["snn"] / median["old_snn"]
        row["snn_new_over_old_spread"] = spread(old_ratios)
        # on a loaded machine the fastest repetition of each is the least disturbed one
        row["snn_new_over_old_of_minima"] = min(times["snn"]) / min(times["old_snn"])
        old_counts_ratios = [n / o for n, o in
                             zip(times["counts"], times["old_counts"], strict=True)]
        row["old_counts_img_s"] = args.batch / median["old_counts"]
        row["counts_new_over_old"] = median["counts"] / median["old_counts"]
        row["counts_new_over_old_spread"] = spread(old_counts_ratios)
        row["counts_new_over_old_of_minima"] = min(times["counts"]) / min(times["old_counts"])
        row["old_same_predictions"] = agree
    if args.compare_whole_chunks:
        row["whole_chunks_images"] = whole_chunk
        row["whole_chunks_overhead"] = median["whole_chunks"] / (median["ann"] * ratio)
        row["whole_chunks_over_snn"] = median["whole_chunks"] / median["snn"]
    if not args.no_train:
        row["train_qcfs_over_relu"], row["train_spread"] = time_training(
            arch, model, x, args.reps, device)
    if measure_memory:
        with tempfile.TemporaryDirectory() as tmp:
            state_path = os.path.join(tmp, "state.pt")
            torch.save(model.state_dict(), state_path)
            threads = torch.get_num_threads()
            ann_mem = measure_peak_memory(arch, levels, "ann", args.batch, state_path,
                                          device, threads, size=size)
            snn_mem = measure_peak_memory(arch, levels, "step", args.batch, state_path,
                                          device, threads, args.step_budget, size=size)
        row["peak_mem_ann_mb"] = ann_mem["peak_mb"]
        row["peak_mem_snn_mb"] = snn_mem["peak_mb"]
        row["peak_mem_snn_over_ann"] = snn_mem["peak_mb"] / max(ann_mem["peak_mb"], 1e-9)
        row["memory_method"] = ann_mem["method"]
    return row


def import_models_of_commit(commit, folder):
    """Import the ``models`` package of git ``commit`` as a package of another name."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "models"],
                             check=True, capture_output=True).stdout
    path = Path(folder) / "archive.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(folder, filter="data")
    name = "models_" + "".join(c for c in commit if c.isalnum())
    shutil.move(str(Path(folder) / "models"), str(Path(folder) / name))
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


def device_description(device):
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {name}, {os.cpu_count()} logical cores"


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_table(result):
    print(f"device: {result['device']}; torch threads: {result['threads']}; "
          f"torch {result['torch']}; median of {result['reps']} (spread min-max); "
          f"load average before/after: {result['load_average_before']} / "
          f"{result['load_average_after']}")
    header = (f"{'arch':<9} {'levels':<10} {'batch':>5} {'ANN img/s':>9} {'SNN img/s':>9} "
              f"{'counts':>8} {'R':>5} {'overhead':>16} {'counts/ANN':>10} "
              f"{'train Q/R':>9} {'mem ANN':>8} {'mem SNN':>8} {'SNN/ANN':>7}")
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        low, high = row["overhead_spread"]
        mem_ratio = row.get("peak_mem_snn_over_ann")
        print(f"{row['arch']:<9} {row['levels']:<10} {row['batch']:>5} "
              f"{row['ann_img_s']:>9.1f} {row['snn_img_s']:>9.1f} {row['counts_img_s']:>8.1f} "
              f"{row['ideal_ratio']:>5.2f} {row['overhead']:>5.3f} ({low:.2f}-{high:.2f}) "
              f"{row['counts_over_ann']:>10.3f} {_fmt(row['train_qcfs_over_relu'], '>9.3f')} "
              f"{_fmt(row['peak_mem_ann_mb'], '>8.1f')} {_fmt(row['peak_mem_snn_mb'], '>8.1f')} "
              f"{_fmt(mem_ratio, '>7.2f')}")
    for row in result["rows"]:
        if "whole_chunks_overhead" in row:
            print(f"{row['arch']} {row['levels']}: segment plan {row['snn_chunk_images']} "
                  f"overhead {row['overhead']:.3f}; whole network in chunks of "
                  f"{row['whole_chunks_images']}: overhead {row['whole_chunks_overhead']:.3f} "
                  f"({row['whole_chunks_over_snn']:.2f}x the plan's time)")
    print("overhead = SNN time / (ANN time x R); R = sum T_in*MACs / sum MACs; "
          "mem in MB (peak minus after-load, fresh process)")


def main(args):
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return None
    if args.step_child is not None:
        step_child(args.step_child)
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config_names = args.levels.split(",")
    if args.quick:
        args.batch, args.reps = 4, 1
        config_names = ["uniform4", MEMORY_LEVELS]
    # on the CPU the process keeps freed memory as training and main_test.py do, unless asked
    allocator = None if args.glibc_defaults or device.type != "cpu" else keep_freed_memory()
    load_before = _load_average()
    rows = []
    if args.train_variants or args.loss_only:
        with tempfile.TemporaryDirectory() as folder:
            old_models = import_models_of_commit(args.against, folder) if args.against else None
            for arch in args.archs.split(","):
                if args.loss_only:
                    started = time.perf_counter()
                    rows.append({"arch": arch, "batch": args.batch,
                                 **loss_comparison(arch, *train_networks(arch, args, device),
                                                   args, device),
                                 "wall_seconds": round(time.perf_counter() - started, 1)})
                else:
                    rows.append(train_variants_row(arch, args, device, old_models))
                print(f"done {arch}: {json.dumps(rows[-1])}", flush=True)
        result = _result(args, device, load_before, rows, loss_steps=args.loss_steps,
                         allocator=allocator)
        print_train_table(result)
        _write_json(result, args.json)
        return result
    with tempfile.TemporaryDirectory() as folder:
        old_models = import_models_of_commit(args.against, folder) if args.against else None
        for arch in args.archs.split(","):
            for config, levels in level_configs(arch, config_names):
                measure_memory = not args.no_memory and (
                    not args.quick or config == MEMORY_LEVELS)
                rows.append(bench_row(arch, config, levels, args, device, measure_memory,
                                      old_models))
                row = rows[-1]
                print(f"done {arch} {config}: ANN {row['ann_img_s']:.1f} img/s, SNN "
                      f"{row['snn_img_s']:.1f}, counts {row['counts_img_s']:.1f}, "
                      f"overhead {row['overhead']:.3f}"
                      + (f", step new/old {row['snn_new_over_old']:.3f}" if old_models else ""),
                      flush=True)
    result = _result(args, device, load_before, rows, step_budget=args.step_budget,
                     allocator=allocator)
    print_table(result)
    _write_json(result, args.json)
    return result


def _result(args, device, load_before, rows, **fields):
    return {"device": device_description(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "batch": args.batch, "reps": args.reps,
            "against": args.against, **fields,
            # other processes on the machine distort timings: say how busy it was
            "load_average_before": load_before, "load_average_after": _load_average(),
            "rows": rows}


def _write_json(result, name):
    if name:
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, path)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
