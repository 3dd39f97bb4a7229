"""Shared plotting helpers (matplotlib, Agg backend): learning curves and similar step/value series."""

from __future__ import annotations

from pathlib import Path

Point = tuple[float, float]


def plot_curves(
    series: dict[str, list[Point]],
    title: str,
    path: Path,
    *,
    xlabel: str = "step",
    ylabel: str = "loss",
) -> Path:
    """Draw each named series of (step, value) points on one chart and write it as a PNG.

    Series with one or two points (before/after markers) are drawn as markers only, longer ones as lines;
    empty series are skipped. Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(8, 4.5))
    try:
        for name, points in series.items():
            points = [(float(x), float(y)) for x, y in points if y is not None]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if len(points) <= 2:
                axes.plot(xs, ys, marker="D", linestyle="none", markersize=8, label=name)
            else:
                axes.plot(xs, ys, marker="." if len(points) < 40 else None, label=name)
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path
