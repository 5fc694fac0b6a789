"""Plot test (and training) top-1 against epochs from the per-epoch CSVs that training writes
(``{checkpoint-dir}/{id}_epochs.csv``), one line per run.

    python3 benchmarks/plot_training.py results/cifar10_resnet20_L4_epochs.csv \
        --label "ResNet-20, L = 4" --out results/cifar10_resnet20_curves.png
"""
import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plotting import pyplot, save  # noqa: E402  (needs the repository root on sys.path)


def read_epochs(path):
    with open(path, newline="") as handle:
        return [{key: value for key, value in row.items()} for row in csv.DictReader(handle)]


def plot_curves(runs, path, title):
    """``runs``: [(label, rows)]; writes a PNG of test top-1 (solid) and training top-1
    (dotted, augmented images) against the epoch."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, rows in runs:
        epochs = [int(row["epoch"]) for row in rows]
        line, = ax.plot(epochs, [float(row["test_acc1"]) for row in rows], "o-", markersize=3,
                        label=f"{label}: test (best {max(float(r['test_acc1']) for r in rows):.2f}%)")
        ax.plot(epochs, [float(row["train_acc1"]) for row in rows], ":", color=line.get_color(),
                label=f"{label}: training (augmented)")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", help="per-epoch CSV files")
    parser.add_argument("--label", action="append", default=None,
                        help="one label per CSV (default: the file name)")
    parser.add_argument("--title", default="top-1 against epochs")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    labels = args.label or [Path(p).stem for p in args.csv]
    if len(labels) != len(args.csv):
        parser.error("give one --label per CSV file")
    plot_curves([(label, read_epochs(p)) for label, p in zip(labels, args.csv, strict=True)],
                args.out, args.title)


if __name__ == "__main__":
    main()
