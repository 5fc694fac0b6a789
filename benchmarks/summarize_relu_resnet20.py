"""The table of docs/relu-networks.md "On CIFAR-10" from the result files that
benchmarks/cifar10_relu_resnet20.sh writes (results/cifar10_resnet20_relu_*).

    python3 benchmarks/summarize_relu_resnet20.py [--json results/cifar10_resnet20_relu_summary.json]
"""
import argparse
import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
PREFIX = "cifar10_resnet20_relu"


def teff_of(result):
    """T_eff of a result file (computed from its levels where it does not say)."""
    if "timing" in result:
        return result["timing"]["T_eff"]
    sys.path.insert(0, str(REPO))
    import models
    from models.timing import layer_fan_ins, teff
    model = models.create_model("resnet20", num_classes=10, levels=result["levels"])
    return teff(result["levels"], layer_fan_ins(model))[0]


def load(name):
    path = RESULTS / f"{PREFIX}_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def differing(result):
    return sum(result["differing_neurons"].values()), result["neurons_compared"]


def rows():
    relu = list(csv.DictReader(open(RESULTS / f"{PREFIX}_epochs.csv")))
    yield {"network": f"ReLU ResNet-20, {len(relu)} epochs", "epochs": 0, "levels": "-",
           "teff": None, "top1": float(relu[-1]["test_acc1"]), "snn_equal": None}
    for level in (4, 8, 16):
        result = load(f"posttrain_L{level}")
        if result is None:
            continue
        yield {"network": "QCFS from the ReLU weights, thresholds from data (P = 98), "
                          "no training", "epochs": 0, "levels": f"uniform {level}",
               "teff": result["timing"]["T_eff"], "top1": result["ann_top1"],
               "snn_equal": result["snn_top1"] == result["ann_top1"] and
               result["agreement"] == 100.0, "differing": differing(result)}
    for kind, label in (("L4", "fine-tuned at uniform L = 4"),
                        ("search3", "fine-tuned at the level search's levels, T_eff <= 3")):
        for epochs in (1, 3, 5):
            result = load(f"{kind}_ft{epochs}_counts")
            if result is None:
                continue
            levels = result["levels"]
            yield {"network": label, "epochs": epochs,
                   "levels": f"uniform {levels[0]}" if len(set(levels)) == 1 else
                   ",".join(map(str, levels)),
                   "teff": teff_of(result), "top1": result["ann_top1"],
                   "snn_equal": result["snn_top1"] == result["ann_top1"] and
                   result["agreement"] == 100.0, "differing": differing(result)}


def percentiles():
    """``{level: {P: QCFS ANN top-1}}`` of the conversions without training."""
    out = {}
    for path in sorted(RESULTS.glob(f"{PREFIX}_posttrain_L*.json")):
        result = json.loads(path.read_text())
        level = result["levels"][0]
        out.setdefault(level, {})[result["init_threshold"][1]] = result["ann_top1"]
    return {level: dict(sorted(values.items())) for level, values in sorted(out.items())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    table = list(rows())
    print("| network | epochs after the ReLU network | levels | T_eff | top-1 (QCFS ANN = SNN) "
          "| spike counts differing from the ANN's levels |")
    print("|---|---|---|---|---|---|")
    for row in table:
        teff = f"{row['teff']:.2f}" if row["teff"] is not None else "-"
        diff = row.get("differing")
        counts = f"{diff[0]:,} of {diff[1]:,}" if diff else "-"
        equal = "" if row["snn_equal"] in (None, True) else " (SNN DIFFERS)"
        print(f"| {row['network']} | {row['epochs']} | {row['levels']} | {teff} | "
              f"{row['top1']:.2f} %{equal} | {counts} |")
    print()
    table = percentiles()
    ps = sorted({p for values in table.values() for p in values})
    print("| P | " + " | ".join(f"L = {level}" for level in table) + " |")
    print("|---|" + "---|" * len(table))
    for p in ps:
        print(f"| {p:g} | " + " | ".join(f"{values[p]:.2f}" if p in values else "-"
                                        for values in table.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": list(rows()), "percentiles": percentiles()},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
