"""AL metric of every QCFS layer of a checkpoint, the per-layer levels it suggests, and the
levels a measured search picks for a T_eff budget (docs/level-search.md).

    python3 get_stats.py -data=cifar10 -arch=vgg16 --id=myid [--batches N] [--bins 5]
    python3 get_stats.py -data digits --id myid --budget-teff 3.0     # searched vs AL rule
    python3 get_stats.py -data digits --id myid --pareto              # accuracy against T_eff
    python3 get_stats.py --npy layer1.npy layer2.npy          # the reference script's mode
"""
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
from torch.utils.data import Subset

from al_metric import (DEFAULT_THRESHOLDS, collect_level_counts, format_table, layer_metrics,
                       npy_metrics)
from config import check_budget_teff
from checkpoint import (is_own_format, is_relu, load_checkpoint_file, model_from_checkpoint,
                        trained_image_size)
from data import get_dataset, make_loader
from level_search import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_TOP_K, calibration_loader,
                          default_budgets, default_candidates, evaluate_levels, minimum_teff,
                          sweep_budgets)
from models.timing import teff
from plotting import pyplot, save
from utils import (EVAL_TERMS, DATASETS, ArgumentParser, UsageError, add_device_args, add_output_flags,
                   arch_name, env_data_root, parse_levels, parse_thresholds, resolve_checkpoint,
                   resolve_device, run_main)

TERMS = EVAL_TERMS  # how the library's errors name this script's flags


def get_args_parser(add_help=True):
    parser = ArgumentParser(
        description="AL metric per QCFS layer and suggested per-layer levels.",
        add_help=add_help, allow_abbrev=False)
    group = parser.add_argument_group("checkpoint")
    group.add_argument("-data", "--dataset", default="cifar10", choices=list(DATASETS),
                       help="dataset (default: cifar10)")
    group.add_argument("-arch", "--arch", default=None, type=arch_name,
                       help="architecture, as main_train.py's -arch (default: the checkpoint's)")
    group.add_argument("--id", default=None, help="run id: {checkpoint-dir}/{id}.pth")
    group.add_argument("-suffix", "--suffix", default="", help="id suffix, as in main_train.py")
    group.add_argument("--checkpoint-dir", default=None,
                       help="folder of the run (default: {dataset}-checkpoints)")
    group.add_argument("--checkpoint", default=None, metavar="PATH", help="a checkpoint file")
    group.add_argument("--levels", default=None,
                       help="levels of a reference-code checkpoint (default: the checkpoint's)")
    group = parser.add_argument_group("measurement")
    group.add_argument("--split", choices=["train", "test"], default="train",
                       help="images to measure on, always with evaluation transforms "
                            "(default: train)")
    group.add_argument("--batches", type=int, default=20,
                       help="number of batches to measure (default: 20; 0 = the whole split)")
    group.add_argument("-b", "--batch-size", type=int, default=128,
                       help="batch size (default: 128)")
    group.add_argument("--bins", type=int, default=5, help="histogram bins (default: 5)")
    group.add_argument("--max-level", type=int, default=None,
                       help="level given to the least concentrated layers, and the largest "
                            "default candidate of the level search (default: the largest "
                            "current level)")
    group.add_argument("--thresholds", default=None,
                       help="three increasing metric cut points t1,t2,t3 of the level rule "
                            f"(default: {','.join(f'{t:g}' for t in DEFAULT_THRESHOLDS)})")
    group.add_argument("--npy", nargs="+", default=None, metavar="FILE",
                       help="reference mode: print the metric of each saved activation array")
    group = parser.add_argument_group(
        "level search by T_eff budget (docs/level-search.md)")
    group.add_argument("--budget-teff", type=float, default=None, metavar="X",
                       help="search the levels with the least calibration loss at all-layer "
                            "T_eff <= X and print them beside the AL rule's (default: no search)")
    group.add_argument("--pareto", action="store_true",
                       help="search a range of budgets (default: 9 evenly spaced from the "
                            "smallest reachable T_eff to the checkpoint's own) and write test "
                            "accuracy against T_eff as PNG, JSON and CSV")
    group.add_argument("--budgets", default=None, metavar="A,B,C",
                       help="the budgets of --pareto (default: the range above)")
    group.add_argument("--candidates", default=None, metavar="1,2,4,8",
                       help="levels every layer may take (default: powers of two up to "
                            "--max-level)")
    group.add_argument("--calib-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                       help="training images (evaluation transforms) the search measures on, a "
                            f"fixed random subset (default: {DEFAULT_CALIBRATION_IMAGES})")
    group.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                       help="frontier points of lowest estimated loss re-measured per budget "
                            f"(default: {DEFAULT_TOP_K})")
    group.add_argument("--pareto-output", default=None, metavar="PREFIX",
                       help="--pareto writes PREFIX.png, PREFIX.json and PREFIX.csv (default: "
                            "next to the checkpoint, {id}_pareto)")
    group = parser.add_argument_group("output")
    group.add_argument("--json", default=None, metavar="FILE",
                       help="results as JSON (default: next to the checkpoint, {id}_stats.json)")
    group.add_argument("--plot", default=None, metavar="FILE.png",
                       help="draw each layer's level histogram with its metric and suggested L")
    group.add_argument("--data-root", default=None,
                       help="dataset folder (default: $PASCAL_DATA, else ./data)")
    add_device_args(group)
    add_output_flags(group)
    return parser


def plot_histograms(rows, path, title=""):
    """One bar chart per layer of the fraction of outputs at each level, with metric and L."""
    plt = pyplot()
    columns = min(5, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.4 * lines),
                                squeeze=False)
    for axis, row in zip(axes.flat, rows):
        counts = np.asarray(row["level_counts"], dtype=float)
        axis.bar(range(len(counts)), counts / max(counts.sum(), 1), color="tab:blue")
        axis.set_title(row["name"], fontsize=8)
        axis.set_xlabel(f"level k (L = {row['level']})", fontsize=7)
        axis.tick_params(labelsize=7)
        axis.text(0.97, 0.95, f"metric {row['metric']:.1f}\nsuggested L = "
                  f"{row['suggested_level']}", transform=axis.transAxes, ha="right", va="top",
                  fontsize=7, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    for axis in list(axes.flat)[len(rows):]:
        axis.axis("off")
    figure.suptitle(title or "QCFS output levels per layer (fraction of outputs)", fontsize=10)
    figure.tight_layout()
    save(figure, path, dpi=110)


def _parse_list(text, flag, kind, example):
    """``"a,b,c"`` -> a list of ``kind`` (int or float); else a one-line UsageError."""
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v >= 1 for v in values):
        raise UsageError(f"{flag} must be comma-separated {kind.__name__}s >= 1 (e.g. "
                         f"{example}), got {text!r}")
    return values


def check_search_args(args):
    """The level-search options as ``{"budget", "budgets", "candidates"}``, or None when no
    search was asked for; a one-line UsageError for anything unusable."""
    if args.budgets is not None and not args.pareto:
        raise UsageError("--budgets sets the budgets of --pareto: add --pareto, or use "
                         "--budget-teff X for one budget")
    if args.pareto_output is not None and not args.pareto:
        raise UsageError("--pareto-output names the files of --pareto: add --pareto")
    if args.budget_teff is None and not args.pareto:
        return None
    if args.npy:
        raise UsageError("--budget-teff and --pareto search the levels of a checkpoint: pass "
                         "--id or --checkpoint instead of --npy")
    check_budget_teff(args.budget_teff)
    if args.calib_images < 1:
        raise UsageError(f"--calib-images must be >= 1, got {args.calib_images}")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    budgets = (_parse_list(args.budgets, "--budgets", float, "2,3.5,5")
               if args.budgets is not None else None)
    candidates = (sorted(set(_parse_list(args.candidates, "--candidates", int, "1,2,4,8")))
                  if args.candidates is not None else None)
    return {"budget": args.budget_teff, "budgets": budgets, "candidates": candidates}


def _format_levels(levels):
    return ",".join(map(str, levels))


def run_level_search(model, model_args, args, search, al_levels, path, device):
    """``--budget-teff`` / ``--pareto``: search, report both choices on the test split, print
    and write the files. Returns the JSON record."""
    show_progress = not args.no_progress
    levels = model_args["levels"]
    max_level = args.max_level or max(levels)
    candidates = search["candidates"] or default_candidates(max_level)
    lowest = minimum_teff(model, candidates)
    pareto_budgets = []
    if args.pareto:
        pareto_budgets = search["budgets"] or default_budgets(model, candidates)
    flagged = [("--budgets", budget) for budget in pareto_budgets]
    if search["budget"] is not None:
        flagged.insert(0, ("--budget-teff", search["budget"]))
    budgets = [budget for _, budget in flagged]
    for flag, budget in flagged:  # before the table is measured: that is the slow part
        if budget < lowest:
            raise UsageError(
                f"T_eff budget {budget:g} is below {lowest:.4f}, the smallest T_eff candidates "
                f"{_format_levels(candidates)} reach on {model_args['arch']}: pass {flag} "
                f">= {math.ceil(lowest * 10_000) / 10_000:.4f} or smaller --candidates")
    root = args.data_root or env_data_root()
    calibration = calibration_loader(get_dataset(args.dataset, root, "train", augment=False),
                                     args.calib_images, args.batch_size, args.workers,
                                     device=device)
    results = sweep_budgets(model, calibration, budgets, candidates, max_level, al_levels,
                            args.top_k, show_progress)
    test_loader = make_loader(get_dataset(args.dataset, root, "test", augment=False),
                              args.batch_size, False, args.workers, device=device)
    tested = {}

    def test(combination):
        key = tuple(combination)
        if key not in tested:
            tested[key] = evaluate_levels(model, test_loader, combination, show_progress,
                                          "test")
        return tested[key]

    table = results[0].table
    evaluations = sum(r.num_evaluations for r in results)
    print(f"level search: candidates {_format_levels(table.candidates)}, {table.num_images} "
          f"calibration images (training split, evaluation transforms), top-{args.top_k}, "
          f"{evaluations} evaluations, {sum(r.seconds for r in results):.1f} s")
    record = {"candidates": table.candidates, "calibration_images": table.num_images,
              "top_k": args.top_k, "num_evaluations": evaluations, "table": table.as_dict()}
    if search["budget"] is not None:
        record["budget"] = _report_budget(results[0], test)
    if args.pareto:
        prefix = (Path(args.pareto_output) if args.pareto_output
                  else path.with_name(f"{path.stem}_pareto"))
        swept = results[1:] if search["budget"] is not None else results
        record["pareto"] = _report_pareto(swept, model, calibration, candidates, al_levels,
                                          test, prefix, model_args, args)
    return record


def _report_budget(result, test):
    """Print the searched levels beside the AL rule's and the uniform ones for one budget."""
    rows = [("searched", result.levels, result.teff, result.calibration_loss,
             result.calibration_top1)]
    for name, entry in (("AL rule", result.al_rule),
                        (f"uniform L={result.uniform.levels[0]}", result.uniform)):
        rows.append((name + ("" if entry.fits else " (over budget)"), entry.levels, entry.teff,
                     entry.calibration_loss, entry.calibration_top1))
    print(f"levels for T_eff <= {result.budget_teff:g} (ANN before fine-tuning; chosen by "
          "calibration loss, test split only reported):")
    print(f"{'':<26} {'T_eff':>7} {'calib loss':>10} {'calib top1':>10} {'test top1':>9}  "
          "levels")
    report = {"result": result.as_dict(), "test": {}}
    for (name, levels, value, loss, top1), key in zip(rows, ("searched", "al_rule", "uniform"),
                                                      strict=True):
        measured = test(levels)
        report["test"][key] = measured
        print(f"{name:<26} {value:>7.4f} {loss:>10.4f} {top1:>9.2f}% {measured['top1']:>8.2f}%  "
              f"{_format_levels(levels)}")
    print(f"searched levels: --levels {_format_levels(result.levels)}")
    return report


def _report_pareto(results, model, calibration, candidates, al_levels, test, prefix,
                   model_args, args):
    """Test accuracy (before fine-tuning) against T_eff: print, write JSON/CSV/PNG."""
    measured = {tuple(e.levels): e for r in results for e in r.evaluated}

    def point(kind, budget, levels, teff):
        entry = measured.get(tuple(levels))
        calibration_metrics = ({"loss": entry.calibration_loss, "top1": entry.calibration_top1}
                               if entry is not None else
                               evaluate_levels(model, calibration, levels))
        tested = test(levels)
        return {"kind": kind, "budget_teff": budget, "teff": teff, "levels": list(levels),
                "calibration_loss": calibration_metrics["loss"],
                "calibration_top1": calibration_metrics["top1"],
                "test_loss": tested["loss"], "test_top1": tested["top1"]}

    points = [point("searched", r.budget_teff, r.levels, r.teff) for r in results]
    points.append(point("al_rule", None, al_levels, results[0].al_rule.teff))
    fan_ins = results[0].table.fan_ins
    for level in candidates:
        points.append(point(f"uniform L={level}", None, [level] * len(fan_ins),
                            teff([level] * len(fan_ins), fan_ins)[0]))
    print(f"{'':<12} {'budget':>7} {'T_eff':>7} {'calib loss':>10} {'test top1':>9}  levels")
    for p in points:
        budget = f"{p['budget_teff']:.4f}" if p["budget_teff"] is not None else "-"
        print(f"{p['kind']:<12} {budget:>7} {p['teff']:>7.4f} {p['calibration_loss']:>10.4f} "
              f"{p['test_top1']:>8.2f}%  {_format_levels(p['levels'])}")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    files = {suffix: prefix.with_name(prefix.name + suffix) for suffix in (".json", ".csv",
                                                                           ".png")}
    files[".json"].write_text(json.dumps({
        "arch": model_args["arch"], "dataset": args.dataset,
        "checkpoint_levels": model_args["levels"], "candidates": list(candidates),
        "budgets": [r.budget_teff for r in results], "points": points}, indent=2) + "\n")
    with open(files[".csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(points[0]))
        writer.writeheader()
        for p in points:
            writer.writerow({**p, "levels": _format_levels(p["levels"]),
                             "budget_teff": "" if p["budget_teff"] is None else p["budget_teff"]})
    plot_pareto(points, files[".png"], f"{model_args['arch']} on {args.dataset}: test accuracy "
                                      "before fine-tuning against T_eff")
    print(f"Pareto points written to {files['.json']}, {files['.csv']} and {files['.png']}")
    return {"points": points, "files": [str(f) for f in files.values()]}


def plot_pareto(points, path, title):
    """Test top-1 against T_eff: the searched levels per budget, the AL rule, uniform levels."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    searched = sorted((p for p in points if p["kind"] == "searched"), key=lambda p: p["teff"])
    axis.plot([p["teff"] for p in searched], [p["test_top1"] for p in searched], "o-",
              color="tab:blue", label="searched (one point per budget)")
    uniform = [p for p in points if p["kind"].startswith("uniform")]
    axis.plot([p["teff"] for p in uniform], [p["test_top1"] for p in uniform], "s--",
              color="tab:gray", label="uniform levels")
    for p in uniform:
        axis.annotate(p["kind"].split()[1], (p["teff"], p["test_top1"]), fontsize=7,
                      textcoords="offset points", xytext=(4, -10))
    for p in points:
        if p["kind"] == "al_rule":
            axis.plot(p["teff"], p["test_top1"], "*", markersize=14, color="tab:red",
                      label="AL rule")
    axis.set_xlabel("all-layer T_eff")
    axis.set_ylabel("test top-1 (%), ANN before fine-tuning")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save(figure, path, dpi=110)


def main(args):
    if args.bins < 4:
        raise UsageError(f"--bins must be >= 4 (the metric divides by (bins-2)(bins-3)), "
                         f"got {args.bins}")
    if args.npy:
        for result in npy_metrics(args.npy, args.bins):
            print(f"{result['path']}: histogram {result['counts']}  A {result['A']:.4f}  "
                  f"b {result['b']:.4f}  metric {result['metric']:.4f}")
        return 0
    thresholds = parse_thresholds(args.thresholds, DEFAULT_THRESHOLDS)
    if args.max_level is not None and args.max_level < 1:
        raise UsageError(f"--max-level must be >= 1, got {args.max_level}")
    search = check_search_args(args)
    device = resolve_device(args.device)
    path, checkpoint_dir = resolve_checkpoint(args)
    checkpoint = load_checkpoint_file(path, checkpoint_dir)
    if is_own_format(checkpoint) and is_relu(checkpoint["model_args"]):
        raise UsageError(f"{path} holds a ReLU network (trained with --activation relu): it "
                         "has no QCFS layers to take statistics of or to choose levels for")
    model, model_args = model_from_checkpoint(checkpoint, path, arch=args.arch,
                                              dataset=args.dataset,
                                              levels=parse_levels(args.levels))
    model.to(device)
    dataset = get_dataset(args.dataset, args.data_root or env_data_root(), args.split,
                          augment=False, image_size=trained_image_size(checkpoint))
    if args.batches:
        dataset = Subset(dataset, range(min(len(dataset), args.batches * args.batch_size)))
    loader = make_loader(dataset, args.batch_size, False, args.workers, device=device)
    counts = collect_level_counts(model, loader, device, show_progress=not args.no_progress)
    rows = layer_metrics(model, counts, args.bins, args.max_level, thresholds)
    suggested = [r["suggested_level"] for r in rows]
    print(f"{model_args['arch']} on {args.dataset} ({args.split} split, {len(dataset)} images, "
          f"evaluation transforms), {args.bins} bins")
    print(format_table(rows))
    print(f"suggested levels: --levels {','.join(map(str, suggested))}")
    print("(metric -> level rule: this project's own, thresholds "
          f"{','.join(f'{t:g}' for t in thresholds)}; the paper's were not available)")
    record = {
        "arch": model_args["arch"], "dataset": args.dataset, "split": args.split,
        "num_images": len(dataset), "bins": args.bins, "thresholds": list(thresholds),
        "levels": model_args["levels"], "suggested_levels": suggested, "layers": rows}
    if search is not None:
        record["level_search"] = run_level_search(model, model_args, args, search, suggested,
                                                  path, device)
    output = Path(args.json) if args.json else path.with_name(f"{path.stem}_stats.json")
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results written to {output}")
    if args.plot:
        plot_histograms(rows, args.plot, f"{model_args['arch']} on {args.dataset}: QCFS output "
                                         "levels, AL metric and suggested L")
        print(f"histograms drawn in {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser().parse_args(), TERMS))
