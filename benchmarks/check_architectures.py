"""Which torchvision architectures convert exactly: the measurements behind docs/architectures.md.

For each ``tv:NAME``: build it with random live weights (random BatchNorm statistics and
affine parameters, thresholds calibrated so every QCFS layer is partly active), mixed levels
from {1, 2, 3, 4, 8}, two images of the smallest square size it accepts but at least 64x64,
float64; convert it on both simulation paths and compare every neuron's emitted count with
the ANN's QCFS level and the logits with the ANN's. A refused architecture records the
one-line reason (the node and the operation).

    python3 benchmarks/check_architectures.py --json benchmarks/results/architectures.json
    python3 benchmarks/check_architectures.py --archs alexnet,vgg16

Segmentation networks (``--archs`` names ``seg:fcn_resnet50``, ``seg:deeplabv3_resnet50``,
with ``+aux`` for the auxiliary head, and ``unet``, the small U-Net of tests/helpers.py) are
made QCFS networks with ``models.qcfsify`` at 64x64 with levels 2-4, so every layer can show
two or more nonzero levels; their rows also give T_eff and the latencies:

    python3 benchmarks/check_architectures.py --archs "$(python3 benchmarks/check_architectures.py --list-segmentation)" \
        --json benchmarks/results/segmentation.json
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import models  # noqa: E402  (needs the repository root on sys.path)
import snn_cost  # noqa: E402
from cost_meter import CostMeter  # noqa: E402
from helpers import (UNet, ann_levels, calibrate_thresholds_, few_long_levels,  # noqa: E402
                     randomize_)
from models.roles import leaves  # noqa: E402
from models.timing import (latency_steps, layer_fan_ins, pipelined_latency_steps,  # noqa: E402
                           teff)

DEFAULT = ("resnet18,resnet50,vgg11_bn,mobilenet_v2,densenet121,googlenet,squeezenet1_1,"
           "alexnet,vgg16,shufflenet_v2_x1_0,regnet_x_400mf,mnasnet0_5,resnext50_32x4d,"
           "inception_v3,efficientnet_b0,vit_b_16,regnet_y_400mf,mobilenet_v3_small,"
           "convnext_tiny,swin_t")
SEGMENTATION = ("seg:fcn_resnet50,seg:fcn_resnet50+aux,seg:deeplabv3_resnet50,"
                "seg:deeplabv3_resnet50+aux,unet")


def build(name):
    """``(arch label, QCFS model, input size, levels)`` for a name of ``--archs``."""
    if name == "unet":
        model = models.qcfsify(UNet(), 1)
        layers = len(models.qcfs_layers(model))
        return "unet", model, 64, [2 + i % 3 for i in range(layers)]
    if name.startswith("seg:"):
        base, _, aux = name[4:].partition("+")
        net = getattr(torchvision.models.segmentation, base)(
            weights=None, weights_backbone=None, num_classes=21, aux_loss=aux == "aux")
        model = models.qcfsify(net, 1, input_shape=(3, 64, 64))
        layers = len(models.qcfs_layers(model))
        return name, model, 64, [2 + i % 3 for i in range(layers)]
    arch = f"tv:{name}"
    model = models.create_model(arch, num_classes=10, levels=1)
    layers = len(models.qcfs_layers(model))
    size = max(64, models.min_input_size(model) or 64)
    return arch, model, size, None


def check(name, seed=0, images=2):
    started = time.perf_counter()
    try:
        arch, model, size, chosen = build(name)
    except ValueError as error:
        return {"arch": name if name.startswith(("seg:", "unet")) else f"tv:{name}",
                "result": "refused", "reason": str(error)}
    layers = len(models.qcfs_layers(model))
    models.set_levels(model, chosen or few_long_levels(layers, seed))
    generator = torch.Generator().manual_seed(seed)
    model = randomize_(model, generator).double()
    x = torch.randn(images, 3, size, size, generator=generator, dtype=torch.float64)
    calibrate_thresholds_(model, x)
    logits, levels = ann_levels(model, x)
    active = [float((level > 0).double().mean()) for level in levels.values()]
    row = {"arch": arch, "result": "exact", "qcfs_layers": layers, "input_size": size,
           "images": images, "levels": models.get_levels(model),
           "active_min": min(active), "active_max": max(active)}
    if chosen is not None:  # the segmentation rows: two or more nonzero levels per layer
        row["min_nonzero_levels"] = min(len(set(level.unique().tolist()) - {0})
                                        for level in levels.values())
        layer_levels = models.get_levels(model)
        row["T_eff"] = teff(layer_levels, layer_fan_ins(model))[0]
        row["latency_steps"] = latency_steps(model)[0]
        row["latency_pipelined_steps"] = pipelined_latency_steps(model)
    scale = max(float(t.abs().max()) for t in leaves(logits))
    for sim in ("step", "counts"):
        snn = models.convert_to_snn(model, sim=sim)
        tick = time.perf_counter()
        out, stats = snn.forward_with_stats(x, keep_counts=True)
        row[f"{sim}_seconds"] = time.perf_counter() - tick
        difference = max(int((s.counts.to(torch.int64) - levels[s.name]).abs().max())
                         for s in stats)
        error = max(float((a - b).abs().max()) for a, b in
                    zip(leaves(out), leaves(logits), strict=True)) / scale
        row[f"{sim}_max_count_difference"] = difference
        row[f"{sim}_max_logit_error_over_max_logit"] = error
        if difference != 0 or error > 1e-9:
            row["result"] = "MISMATCH"
    row["cost_report"], report = cost_report(model, snn, x, stats, levels)
    if report is not None:  # the break-even on these random live weights
        totals = report["totals"]
        row["events_per_zero_skip_mac"] = totals["events_per_zero_skip_mac"]
        row["snn_over_qann_zero_skip"] = {
            scenario: report["energy_model"]["snn_over_qann"][f"{scenario}_over_zero_skip"]
            for scenario in ("event_driven", "time_stepped")}
        row["energy_pj_per_image"] = {
            name: part["total"]
            for name, part in report["energy_model"]["totals_pj_per_image"].items()}
    row["seconds"] = time.perf_counter() - started
    return row


def cost_report(model, snn, x, stats, levels):
    """``("ran", report)`` when the cost report, T_eff and the latencies compute, the
    report's spikes per image equal the ANN's levels and its synaptic events are no fewer
    than the zero-skipping quantized ANN's MACs; otherwise what went wrong, in one line, and
    None."""
    try:
        layer_levels = models.get_levels(model)
        timing = {"T_eff": teff(layer_levels, layer_fan_ins(model))[0],
                  "latency_steps": latency_steps(model)[0],
                  "latency_pipelined_steps": pipelined_latency_steps(model),
                  "T_eff_reference": None,
                  "mean_level": sum(layer_levels) / len(layer_levels)}
        meter = CostMeter(snn)
        meter.add(x, stats)
        report = snn_cost.build_report(meter, timing)
    except Exception as error:  # recorded, not raised: the table says which architecture
        return f"failed: {type(error).__name__}: {error}".splitlines()[0], None
    spikes = {row["layer"]: row["spikes_per_image"] for row in report["rows"]
              if row["kind"] == "spiking"}
    expected = {name: int(level.sum()) / x.shape[0] for name, level in levels.items()}
    if spikes != expected:
        return "spike counts differ from the ANN's levels", None
    events = sum(r["accumulates_per_image"] + r["macs_per_image"] for r in report["rows"])
    if events < sum(r["zero_skip_macs_per_image"] for r in report["rows"]):
        return "fewer synaptic events than zero-skipping MACs", None
    return "ran", report


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.archs.split(","):
        row = check(name)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "levels"}), flush=True)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        result = {"torch": torch.__version__, "torchvision": models.torchvision_version(),
                  "threads": torch.get_num_threads(), "rows": rows}
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, path)
    return rows


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=DEFAULT,
                        help="comma-separated torchvision names (default: the documented set)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's default)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the rows as JSON (default: no file)")
    parser.add_argument("--list-segmentation", action="store_true",
                        help="print the segmentation names for --archs and exit")
    return parser


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    if arguments.list_segmentation:
        print(SEGMENTATION)
    else:
        main(arguments)
