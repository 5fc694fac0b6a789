"""The conventional QCFS baseline's report (``main_test.py --baseline``): the first T whose
accuracy reaches the ANN's, and the accuracy-against-T plot. The simulation itself is
:mod:`models.baseline`, which stays free of plotting.
"""
from plotting import pyplot, save

__all__ = ["first_reaching", "plot_baseline"]


def first_reaching(accuracy, target, tolerance=0.1):
    """Smallest T whose accuracy is >= ``target - tolerance`` (percentage points), else None."""
    for num_steps in sorted(accuracy):
        if accuracy[num_steps] >= target - tolerance - 1e-9:
            return num_steps
    return None


def plot_baseline(baseline, path, title=""):
    """PNG: baseline accuracy against T (log2 axis), the ANN line and PASCAL's point at its
    T_eff and at its latency. ``baseline`` holds lists ``timesteps`` and ``top1``, ``ann_top1``
    and ``pascal`` (``top1``, ``T_eff``, ``latency_steps``; None entries are left out)."""
    plt = pyplot()
    steps, accuracy = list(baseline["timesteps"]), list(baseline["top1"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, accuracy, "o-", color="#1f77b4",
            label="conventional QCFS SNN (IF neurons, one T for all layers)")
    if baseline.get("ann_top1") is not None:
        ax.axhline(baseline["ann_top1"], color="#999999", linestyle="--",
                   label=f"QCFS ANN {baseline['ann_top1']:.2f}%")
    pascal = baseline.get("pascal") or {}
    xs = list(steps)
    if pascal.get("top1") is not None:
        ax.plot([pascal["T_eff"]], [pascal["top1"]], "*", markersize=15, color="#d62728",
                label=f"PASCAL {pascal['top1']:.2f}% at T_eff = {pascal['T_eff']:.2f}")
        ax.plot([pascal["latency_steps"]], [pascal["top1"]], "D", markersize=8,
                color="#d62728", fillstyle="none",
                label=f"PASCAL at its latency, {pascal['latency_steps']} steps")
        xs += [pascal["T_eff"], pascal["latency_steps"]]
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    ax.set_xlabel("timesteps T (log2)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "accuracy against timesteps", fontsize=10)
    fig.tight_layout()
    save(fig, path)
