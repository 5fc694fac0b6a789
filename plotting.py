"""The one matplotlib setup of the scripts and reports: the non-interactive Agg backend (files
only, no display needed) and saving a figure."""
from pathlib import Path

__all__ = ["pyplot", "save"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend; matplotlib is imported only when a plot is
    drawn (a missing matplotlib raises its ``ModuleNotFoundError`` then:
    ``pip install -r requirements.txt``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path, dpi=120):
    """Write ``fig`` to ``path`` (its folder created if missing) and close it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt
    plt.close(fig)
