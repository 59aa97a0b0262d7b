"""matplotlib for the PNG writers, an optional extra (``pip install vmae2[plot]``), drawn without pyplot.

:func:`figure` gives a :class:`matplotlib.figure.Figure` on its own Agg canvas, or the reason matplotlib cannot be
used (:func:`vmae2_kernels.optional.load`); :func:`save` writes a figure, or returns the one-line
``"NAME skipped: reason"`` that the writers (``confusion.png``, ``reconstruction.png``, the benchmark report's
``report.png``) hand to their callers, which print it and carry on.
"""
from __future__ import annotations

from pathlib import Path

from vmae2_kernels import optional


def figure(**kwargs):
    """``(Figure(**kwargs) on an Agg canvas, None)``, or ``(None, reason)`` without a usable matplotlib."""
    _, reason = optional.load("matplotlib")
    agg, reason = (None, reason) if reason else optional.load("matplotlib.backends.backend_agg")
    if agg is None:
        return None, reason
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    agg.FigureCanvasAgg(fig)
    return fig, None


def save(fig, reason: str | None, path) -> str | None:
    """Write ``fig`` (``fig, reason`` as :func:`figure` returns them) as the PNG ``path`` (parent folders made) and
    return None; with no figure, write nothing and return ``"<file name> skipped: <reason>"``."""
    path = Path(path)
    if fig is None:
        return f"{path.name} skipped: {reason}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return None
