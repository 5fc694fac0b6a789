"""Evaluate a checkpoint as QCFS ANN and as PASCAL SNN, and report how exactly they agree.

    python3 main_test.py -data=cifar10 -arch=vgg16 --id=myid
    python3 main_test.py -data digits --id quick --dtype float64
    python3 main_test.py -data digits --id quick --report            # operations, energy, T_eff
    python3 main_test.py -data digits --id quick --baseline qcfs -T 1,2,4,8,16,32,64
"""
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

import energy_model
import models
import snn_cost
from allocator import keep_freed_memory
from baseline_report import first_reaching, plot_baseline
from checkpoint import (is_own_format, is_relu, load_checkpoint_file, model_from_checkpoint,
                        qcfs_from_relu, relu_weights, trained_image_size)
from compiled import compile_for_steps
from cost_meter import CostMeter
from data import get_dataset, make_loader
from level_search import DEFAULT_CALIBRATION_IMAGES, calibration_loader
from models.baseline import convert_to_if
from threshold_init import data_thresholds_
from utils import (EVAL_TERMS, DATASETS, ArgumentParser, UsageError, add_device_args, add_output_flags,
                   arch_name, env_data_root, parse_init_threshold, parse_levels, progress,
                   resolve_checkpoint, resolve_device, run_main, setup_logging)

TERMS = EVAL_TERMS  # how the library's errors name this script's flags


def get_args_parser(add_help=True):
    parser = ArgumentParser(
        description="Evaluate a QCFS checkpoint as ANN and as PASCAL spiking network.",
        add_help=add_help, allow_abbrev=False)
    group = parser.add_argument_group("what to evaluate")
    group.add_argument("-data", "--dataset", default="cifar10", choices=list(DATASETS),
                       help="dataset (default: cifar10)")
    group.add_argument("-arch", "--arch", default=None, type=arch_name,
                       help="architecture, as main_train.py's -arch; checked against the "
                            "checkpoint, required for a reference-code checkpoint (default: from "
                            "the checkpoint)")
    group.add_argument("--id", default=None,
                       help="run id: evaluates {checkpoint-dir}/{id}.pth "
                            "(default: {arch}_{dataset})")
    group.add_argument("-suffix", "--suffix", default="", help="id suffix, as in main_train.py")
    group.add_argument("--checkpoint-dir", default=None,
                       help="folder of the run (default: {dataset}-checkpoints)")
    group.add_argument("--checkpoint", default=None, metavar="PATH",
                       help="evaluate this file instead of {checkpoint-dir}/{id}.pth")
    group.add_argument("--levels", default=None,
                       help="per-layer levels (required for reference-code checkpoints; with a "
                            "ReLU checkpoint: convert it without training, see "
                            "--init-threshold; default: the checkpoint's)")
    group.add_argument("--init-threshold", default=None,
                       help="a ReLU checkpoint with --levels: the QCFS thresholds, a number or "
                            "auto[:P] (each layer's P-th percentile of its positive inputs on "
                            "--calib-images training images, as main_train.py) (default: auto)")
    group.add_argument("--calib-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                       help="training images (evaluation transforms) --init-threshold auto "
                            f"measures on (default: {DEFAULT_CALIBRATION_IMAGES})")
    group.add_argument("--variant", default=None, choices=list(models.VARIANTS),
                       help="stem and classifier of a reference-code checkpoint (default: read "
                            "from its tensor shapes)")
    group.add_argument("--image-size", type=int, default=None,
                       help="evaluate at this size (ImageFolder data: resize to size*8/7, centre "
                            "crop size; default: the checkpoint's training size, else 32 for "
                            "CIFAR and the digits and 224 for ImageFolder data)")
    group.add_argument("--data-root", default=None,
                       help="dataset folder (default: $PASCAL_DATA, else ./data)")
    group.add_argument("--num-images", type=int, default=None,
                       help="evaluate only the first N test images (default: all)")
    group = parser.add_argument_group("how")
    group.add_argument("--mode", choices=["ann", "snn", "both"], default="both",
                       help="which networks to run (default: both)")
    group.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                       help="float64 is the exact certificate (ANN and SNN agree on every "
                            "image); float32 is faster (default: float32)")
    group.add_argument("--sim", choices=["step", "counts"], default="step",
                       help="step: simulate every timestep; counts: exact closed-form spike "
                            "counts per window (default: step)")
    group.add_argument("--compile", action="store_true",
                       help="run the ANN through torch.compile (the spiking network's paths "
                            "run eagerly); eager with a warning where no compiler is available "
                            "(default: off)")
    group.add_argument("--allow-tf32", action="store_true",
                       help="let CUDA use TF32 for float32 convolutions and matmuls: faster, but "
                            "ANN and SNN then disagree far beyond float32 rounding (default: off)")
    group.add_argument("-b", "--batch-size", type=int, default=64,
                       help="evaluation batch size (default: 64)")
    group.add_argument("--output", default=None, metavar="FILE",
                       help="JSON results (default: next to the checkpoint, {id}_test.json)")
    group = parser.add_argument_group("cost report (--report)")
    group.add_argument("--report", action="store_true",
                       help="count spikes, synaptic operations, neuron updates and energy per "
                            "layer on the evaluated images, with T_eff and latency (default: off)")
    group.add_argument("--report-json", default=None, metavar="FILE",
                       help="report as JSON (default: next to the checkpoint, {id}_cost.json)")
    group.add_argument("--report-csv", default=None, metavar="FILE",
                       help="per-layer rows as CSV (default: {id}_cost.csv next to the checkpoint)")
    group.add_argument("--report-plot", default=None, metavar="FILE.png",
                       help="per-layer bar chart (default: {id}_cost.png next to the checkpoint)")
    group.add_argument("--e-ac", type=float, default=None,
                       help="the synaptic-operation proxy's energy per accumulate in pJ "
                            f"(default: {snn_cost.E_AC_PJ}, 45 nm fp32; the constant "
                            "fp32_add_pj)")
    group.add_argument("--e-mac", type=float, default=None,
                       help="the proxy's energy per multiply-accumulate in pJ (default: "
                            f"{snn_cost.E_MAC_PJ}, 45 nm fp32; fp32_mac_pj)")
    group.add_argument("--e-op", "--e-update", dest="e_op", type=float, default=None,
                       help="the proxy's energy per neuron operation in pJ, 2 T_in + 2 "
                            "(max(T_in, L) - 1) + L of them per neuron (default: "
                            f"{snn_cost.E_OP_PJ}, priced as an accumulate; 0 leaves the "
                            "neurons' own work out; neuron_op_pj)")
    group.add_argument("--energy", action="append", default=[], metavar="NAME=VALUE",
                       help="set one energy constant (repeatable; names, defaults and sources: "
                            "docs/evaluation.md#energy-constants; the reuse factors take null)")
    group.add_argument("--energy-constants", default=None, metavar="FILE.json",
                       help="energy constants from a JSON object {name: value} (or a cost "
                            "report's energy_model block); --energy and --e-* override it")
    group = parser.add_argument_group("conventional baseline (--baseline)")
    group.add_argument("--baseline", choices=["qcfs"], default=None,
                       help="also simulate the conventional QCFS spiking network (IF neurons, "
                            "reset by subtraction, input repeated every step) (default: off)")
    group.add_argument("-T", "--timesteps", default="1,2,4,8,16,32,64",
                       help="comma-separated T at which the baseline is read, in one run up to "
                            "the largest (default: 1,2,4,8,16,32,64)")
    group.add_argument("--baseline-tolerance", type=float, default=0.1,
                       help="the baseline reaches the ANN when within this many percentage "
                            "points (default: 0.1)")
    group.add_argument("--baseline-plot", default=None, metavar="FILE.png",
                       help="accuracy against T (default: {id}_baseline.png next to the "
                            "checkpoint)")
    group = parser.add_argument_group("machine")
    add_device_args(group)
    add_output_flags(group)
    return parser


class AnnWithLevels:
    """The ANN in eval mode as a callable returning ``(logits, {layer name: integer QCFS level
    per neuron})``. The hooks that read the levels are registered once, so that a compiled
    ANN (``compile=True``) traces them into its graph once."""

    def __init__(self, model, compile=False, device=None, logger=None):
        self.levels, self.handles = {}, []
        for name, module in models.qcfs_layers(model):
            def hook(mod, inputs, output, name=name):
                self.levels[name] = mod.quantize(inputs[0])
            self.handles.append(module.register_forward_hook(hook))
        self.model = compile_for_steps(model, device, logger) if compile else model

    @torch.no_grad()
    def __call__(self, x):
        self.levels.clear()
        logits = self.model(x)
        return logits, dict(self.levels)

    def close(self):
        for handle in self.handles:
            handle.remove()


def evaluate_both(ann, snn, loader, device, dtype, mode, show_progress=True, cost_meter=None):
    """Run ANN (an :class:`AnnWithLevels`) and/or SNN over ``loader``; returns a results dict
    (counts and agreements).

    ``cost_meter``: a :class:`cost_meter.CostMeter` of ``snn``; it is given each batch's
    images and ``LayerStats`` (with per-neuron counts).
    """
    run_ann, run_snn = mode in ("ann", "both"), mode in ("snn", "both")
    totals = {"images": 0, "ann_correct": 0, "snn_correct": 0, "agree": 0}
    layer_equal, layer_total, spikes = {}, {}, {}
    for images, targets in progress(loader, show_progress, desc="evaluate"):
        images = images.to(device, dtype=dtype)
        targets = targets.to(device)
        totals["images"] += len(targets)
        if run_ann:
            ann_logits, ann_levels = ann(images)
            totals["ann_correct"] += int((ann_logits.argmax(1) == targets).sum())
        if run_snn:
            snn_logits, stats = snn.forward_with_stats(
                images, keep_counts=run_ann or cost_meter is not None)
            if cost_meter is not None:
                cost_meter.add(images, stats)
            totals["snn_correct"] += int((snn_logits.argmax(1) == targets).sum())
            for s in stats:
                spikes[s.name] = spikes.get(s.name, 0) + s.emitted_spikes
                if run_ann:
                    layer_equal[s.name] = layer_equal.get(s.name, 0) + \
                        int((s.counts == ann_levels[s.name]).sum())
                    layer_total[s.name] = layer_total.get(s.name, 0) + s.counts.numel()
        if run_ann and run_snn:
            totals["agree"] += int((ann_logits.argmax(1) == snn_logits.argmax(1)).sum())
    n = max(totals["images"], 1)
    result = {"num_images": totals["images"],
              "ann_top1": 100.0 * totals["ann_correct"] / n if run_ann else None,
              "snn_top1": 100.0 * totals["snn_correct"] / n if run_snn else None,
              "agreement": 100.0 * totals["agree"] / n if run_ann and run_snn else None}
    if run_ann and run_snn:
        result["layer_count_agreement"] = {
            name: layer_equal[name] / layer_total[name] for name in layer_total}
        result["differing_neurons"] = {
            name: layer_total[name] - layer_equal[name] for name in layer_total}
        result["neurons_compared"] = sum(layer_total.values())
    if run_snn:
        result["spikes_per_image"] = {name: count / n for name, count in spikes.items()}
    return result


def evaluate_baseline(if_net, loader, device, dtype, timesteps, show_progress=True):
    """Accuracy and spikes of the conventional IF network at each T in ``timesteps``.

    Each batch is simulated once, up to the largest T; the prediction at T is the argmax of
    the mean output over the first T steps. Returns ``{"timesteps", "top1",
    "spikes_per_image"}`` (lists in increasing T; spikes emitted by all IF neurons in the
    first T steps).
    """
    wanted = sorted(set(timesteps))
    correct, spikes = dict.fromkeys(wanted, 0), dict.fromkeys(wanted, 0)
    fired, images = [0], 0

    def count(module, args, output):
        fired[0] += int((output != 0).sum())

    handles = [neuron.register_forward_hook(count) for _, neuron in if_net.neurons()]
    try:
        for x, targets in progress(loader, show_progress, desc="baseline"):
            x, targets = x.to(device, dtype=dtype), targets.to(device)
            images += len(targets)
            fired[0] = 0
            for t, mean_output in if_net.running_outputs(x, wanted[-1]):
                if t in correct:
                    correct[t] += int((mean_output.argmax(1) == targets).sum())
                    spikes[t] += fired[0]
    finally:
        for handle in handles:
            handle.remove()
    n = max(images, 1)
    return {"timesteps": wanted, "top1": [100.0 * correct[t] / n for t in wanted],
            "spikes_per_image": [spikes[t] / n for t in wanted]}


def parse_timesteps(text):
    """``"1,2,4"`` -> [1, 2, 4]; UsageError unless every entry is an integer >= 1."""
    try:
        values = [int(part) for part in str(text).replace(" ", "").split(",") if part]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UsageError(f"-T/--timesteps must be comma-separated integers >= 1, got {text!r}")
    return sorted(set(values))


def main(args):
    logger = setup_logging(quiet=False)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    device = resolve_device(args.device)
    levels = parse_levels(args.levels)
    if args.num_images is not None and args.num_images < 1:
        raise UsageError(f"--num-images must be >= 1, got {args.num_images}")
    if args.image_size is not None and args.image_size < 8:
        raise UsageError(f"--image-size must be >= 8, got {args.image_size}")
    if args.report and args.mode == "ann":
        raise UsageError("--report counts the spiking network's operations: drop --mode ann")
    if args.baseline and args.mode == "snn":
        raise UsageError("--baseline is compared with the ANN accuracy: use --mode both "
                         "(default) or --mode ann")
    for name in ("e_ac", "e_mac", "e_op"):
        value = getattr(args, name)
        if value is not None and not (value >= 0 and value < float("inf")):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite energy >= 0 (pJ), "
                             f"got {value}")
    energy_overrides(args)
    timesteps = parse_timesteps(args.timesteps) if args.baseline else None
    if device.type == "cpu":  # each batch reuses the memory the last one freed
        keep_freed_memory()
    if args.calib_images < 1:
        raise UsageError(f"--calib-images must be >= 1, got {args.calib_images}")
    try:
        init_threshold = parse_init_threshold("auto" if args.init_threshold is None
                                              else args.init_threshold)
    except ValueError as error:
        raise UsageError(f"--init-threshold: {error}") from None
    path, checkpoint_dir = resolve_checkpoint(args)
    checkpoint = load_checkpoint_file(path, checkpoint_dir)
    relu_net = None
    if levels is not None and relu_weights(checkpoint) is not None:
        # conversion without training: the ReLU network, its QCFS version and the SNN
        model, model_args, relu_net = from_relu_checkpoint(checkpoint, path, args, levels,
                                                           init_threshold)
    else:
        if args.init_threshold is not None:
            raise UsageError("--init-threshold sets the thresholds of a ReLU checkpoint "
                             "converted with --levels: pass --levels with a ReLU checkpoint, or "
                             "drop --init-threshold")
        model, model_args = model_from_checkpoint(checkpoint, path, arch=args.arch,
                                                  dataset=args.dataset, levels=levels,
                                                  variant=args.variant)
    mode = args.mode
    if is_relu(model_args):
        if args.mode == "snn" or args.report or args.baseline:
            raise UsageError(f"{path} holds a ReLU network (trained with --activation relu), "
                             "which has no spiking counterpart: evaluate it without --mode snn, "
                             "--report and --baseline")
        mode = "ann"
        logger.info("a ReLU network (--activation relu): evaluated as an ANN only")
    if model_args["dataset"] not in (None, args.dataset):
        logger.info(f"note: checkpoint trained on {model_args['dataset']}, evaluating on "
                    f"{args.dataset}")
    if device.type == "cuda" and not args.allow_tf32:
        # TF32 (on by default for cuDNN convolutions on recent GPUs) keeps 10 mantissa bits:
        # ANN and SNN would then each round their convolutions far more coarsely than float32,
        # and differently, flipping neurons near level boundaries (measured on an H100: VGG-16
        # digits spike counts matched on only 1 of 15 layers). Evaluate in true float32.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model = model.to(device=device, dtype=dtype).eval()
    image_size = args.image_size or trained_image_size(checkpoint)
    thresholds = None
    if relu_net is not None:
        relu_net = relu_net.to(device=device, dtype=dtype).eval()
        if isinstance(init_threshold, tuple):
            thresholds = thresholds_from_data(model, args, image_size, init_threshold[1],
                                              device, logger)
    snn = None
    if mode in ("snn", "both"):  # refused before any data is read
        snn = models.convert_to_snn(model, sim=args.sim, input_shape=None if image_size is None
                                    else (3, image_size, image_size))

    test_set = get_dataset(args.dataset, args.data_root or env_data_root(), "test",
                           image_size=image_size)
    if hasattr(test_set, "source"):
        logger.info(f"data: {test_set.source}")
    models.check_input_size(model, tuple(test_set[0][0].shape), arch=model_args["arch"])
    if args.num_images is not None:
        test_set = Subset(test_set, range(min(args.num_images, len(test_set))))
    loader = make_loader(test_set, args.batch_size, False, args.workers, device=device)

    started = time.time()
    meter = CostMeter(snn) if args.report else None
    ann = AnnWithLevels(model, args.compile, device, logger)
    result = evaluate_both(ann, snn, loader, device, dtype, mode, not args.no_progress,
                           cost_meter=meter)
    ann.close()
    if relu_net is not None:
        result["relu_top1"] = evaluate_both(AnnWithLevels(relu_net, args.compile, device, logger),
                                            None, loader, device, dtype, "ann",
                                            not args.no_progress)["ann_top1"]
        result["init_threshold"] = init_threshold
        result["thresholds"] = {name: float(layer.threshold.detach())
                                for name, layer in models.qcfs_layers(model)}
        result["calibration_images"] = thresholds
    seconds = time.time() - started
    result.update({"arch": model_args["arch"], "dataset": args.dataset,
                   "activation": "relu" if is_relu(model_args) else "qcfs",
                   "levels": model_args["levels"], "dtype": args.dtype, "sim": args.sim,
                   "device": str(device), "seconds": round(seconds, 2),
                   "checkpoint": str(path)})
    if not is_relu(model_args):
        timing = snn_cost.timing_summary(model, model_args["arch"],
                                         model_args["variant"], args.dataset,
                                         model_args["levels"])
        result["timing"] = timing
    report(result, logger)
    if relu_net is not None:
        logger.info(f"without training: ReLU ANN {result['relu_top1']:.2f}% -> QCFS ANN "
                    + (f"{result['ann_top1']:.2f}%" if result["ann_top1"] is not None else "-")
                    + (f" -> SNN {result['snn_top1']:.2f}%" if result["snn_top1"] is not None
                       else "") + f" at T_eff {timing['T_eff']:.4f}")
    if args.report:
        result["cost"] = write_cost_report(meter, timing, args, path, logger)
    if args.baseline:
        result["baseline"] = run_baseline(model, loader, device, dtype, timesteps, result,
                                          args, path, logger)
    output = Path(args.output) if args.output else path.with_name(f"{path.stem}_test.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    logger.info(f"results written to {output}")
    return 0


def from_relu_checkpoint(checkpoint, path, args, levels, init_threshold):
    """``(QCFS model, model_args, ReLU model)`` from a ReLU checkpoint: ours (its arch) or a
    plain state dict (``-arch`` and ``-data`` say what it is)."""
    if is_own_format(checkpoint):
        stored = checkpoint["model_args"]
        arch, num_classes = stored["arch"], stored["num_classes"]
        variant = stored["variant"]
        if args.arch is not None and args.arch != arch:
            raise UsageError(f"{path} holds a ReLU {arch}, not {args.arch}: drop -arch")
    elif args.arch is None:
        raise UsageError(f"{path} is a plain state dict: pass -arch to say which network it is")
    else:
        arch, (num_classes, variant) = args.arch, DATASETS[args.dataset]
        variant = args.variant or variant
    constant = 4.0 if isinstance(init_threshold, tuple) else init_threshold
    model, model_args = qcfs_from_relu(checkpoint, path, arch, args.dataset, variant,
                                       num_classes, levels, constant, 0.0)
    relu_net = models.create_model(arch, num_classes=num_classes, levels=None, variant=variant,
                                   activation="relu")
    relu_net.load_state_dict(relu_weights(checkpoint))
    return model, model_args, relu_net


def thresholds_from_data(model, args, image_size, percentile, device, logger):
    """Set ``model``'s thresholds from calibration images of the training split (evaluation
    transforms); returns the number of images used."""
    train_set = get_dataset(args.dataset, args.data_root or env_data_root(), "train",
                            augment=False, image_size=image_size)
    loader = calibration_loader(train_set, args.calib_images, args.batch_size, args.workers,
                                device=device)
    chosen = data_thresholds_(model, loader, percentile, show_progress=not args.no_progress)
    used = len(loader.dataset)
    logger.info(f"thresholds from data: the {percentile:g}th percentile of each layer's "
                f"positive inputs on {used} training images: "
                + ", ".join(f"{name} {value:.4g}" for name, value, _ in chosen))
    return used


def energy_overrides(args):
    """The energy constants set by --energy-constants and --energy (name -> value), checked."""
    overrides = {}
    try:
        if args.energy_constants:
            overrides.update(energy_model.load_constants(args.energy_constants))
        for text in args.energy:
            name, value = energy_model.parse_override(text)
            overrides[name] = value
        energy_model.constants(overrides)
    except energy_model.ConstantsError as error:
        raise UsageError(f"{error} (the constants: docs/evaluation.md#energy-constants)") \
            from None
    return overrides


def write_cost_report(meter, timing, args, path, logger):
    """Print the cost table and write its JSON, CSV and PNG; returns the totals and paths."""
    cost = snn_cost.build_report(meter, timing, e_ac=args.e_ac, e_mac=args.e_mac,
                                 e_op=args.e_op, constants=energy_overrides(args))
    logger.info(f"cost per image on {cost['images']} images ({args.sim} simulation):")
    for line in snn_cost.format_report(cost):
        logger.info(line)
    files = {"json": Path(args.report_json or path.with_name(f"{path.stem}_cost.json")),
             "csv": Path(args.report_csv or path.with_name(f"{path.stem}_cost.csv")),
             "plot": Path(args.report_plot or path.with_name(f"{path.stem}_cost.png"))}
    snn_cost.write_report_json(cost, files["json"])
    snn_cost.write_report_csv(cost, files["csv"])
    snn_cost.plot_report(cost, files["plot"])
    logger.info(f"cost report written to {files['json']}, {files['csv']}, {files['plot']}")
    return dict(cost["totals"], break_even=cost["energy_model"]["break_even"],
                neurobench=cost["neurobench"],
                files={key: str(value) for key, value in files.items()})


def run_baseline(model, loader, device, dtype, timesteps, result, args, path, logger):
    """Simulate the conventional QCFS network, print and plot it next to PASCAL."""
    started = time.time()
    if_net = convert_to_if(model)
    baseline = evaluate_baseline(if_net, loader, device, dtype, timesteps,
                                 not args.no_progress)
    ann_top1, timing = result["ann_top1"], result["timing"]
    reached = first_reaching(dict(zip(baseline["timesteps"], baseline["top1"], strict=True)),
                             ann_top1, args.baseline_tolerance)
    pascal = {"top1": result["snn_top1"], "T_eff": timing["T_eff"],
              "T_eff_reference": timing["T_eff_reference"],
              "latency_steps": timing["latency_steps"],
              "latency_pipelined_steps": timing["latency_pipelined_steps"],
              "spikes_per_image": (sum(result["spikes_per_image"].values())
                                   if result.get("spikes_per_image") else None)}
    baseline.update(kind=args.baseline, ann_top1=ann_top1, tolerance_pp=args.baseline_tolerance,
                    reached_at=reached, pascal=pascal, seconds=round(time.time() - started, 2))
    logger.info("conventional QCFS spiking network (IF neurons, reset by subtraction, membrane "
                "starts at threshold/2, input repeated every step):")
    logger.info(f"{'T':>5} {'top-1':>8} {'spikes/img':>11}")
    for t, top1, spikes in zip(baseline["timesteps"], baseline["top1"],
                               baseline["spikes_per_image"], strict=True):
        logger.info(f"{t:>5} {top1:>7.2f}% {spikes:>11.4g}")
    if reached is None:
        logger.info(f"ANN accuracy {ann_top1:.2f}% (within {args.baseline_tolerance} pp): not "
                    f"reached by T = {baseline['timesteps'][-1]}")
    else:
        logger.info(f"ANN accuracy {ann_top1:.2f}% (within {args.baseline_tolerance} pp) first "
                    f"reached at T = {reached}")
    if pascal["top1"] is None:
        logger.info("PASCAL: not run (--mode ann)")
    else:
        spikes = pascal["spikes_per_image"]
        logger.info(f"PASCAL (exact): {pascal['top1']:.2f}%, T_eff {pascal['T_eff']:.3f}, "
                    f"latency {pascal['latency_steps']} steps sequential, "
                    f"{pascal['latency_pipelined_steps']} pipelined"
                    + (f", {spikes:.4g} spikes/img" if spikes is not None else ""))
    plot = Path(args.baseline_plot or path.with_name(f"{path.stem}_baseline.png"))
    plot_baseline(baseline, plot, title=(
        f"{result['arch']} on {result['dataset']}: conventional QCFS SNN vs PASCAL"))
    logger.info(f"baseline plot written to {plot}")
    baseline["plot"] = str(plot)
    return baseline


def report(result, logger):
    activations = ("ReLU" if result.get("activation") == "relu"
                   else f"levels {','.join(map(str, result['levels']))}")
    logger.info(f"{result['arch']} on {result['dataset']} ({result['num_images']} test images), "
                f"{activations}, {result['dtype']}, "
                f"{result['device']}, {result['seconds']:.1f}s")
    if result["ann_top1"] is not None:
        logger.info(f"ANN top-1: {result['ann_top1']:.2f}%")
    if result["snn_top1"] is not None:
        logger.info(f"SNN top-1: {result['snn_top1']:.2f}%  (PASCAL, {result['sim']} simulation)")
    if result["agreement"] is not None:
        logger.info(f"prediction agreement ANN vs SNN: {result['agreement']:.2f}% of images")
        counts = result["layer_count_agreement"]
        exact = sum(1 for v in counts.values() if v == 1.0)
        worst = min(counts, key=counts.get)
        logger.info(f"spike counts equal to ANN levels: {exact}/{len(counts)} layers on every "
                    f"neuron; lowest {worst} {100 * counts[worst]:.4f}%")
        logger.info(f"neurons whose spike count differs from their ANN level: "
                    f"{sum(result['differing_neurons'].values()):,} of "
                    f"{result['neurons_compared']:,} (all layers, all images)")


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser().parse_args(), TERMS))
