"""Shared plotting helpers (matplotlib, Agg backend): learning curves and similar step/value series."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

Point = tuple[float, float]


@dataclass(frozen=True)
class Panel:
    """One chart of a figure: named (x, y) series on shared axes."""

    series: dict[str, list[Point]]
    xlabel: str = "step"
    ylabel: str = "loss"
    ylim: tuple[float, float] | None = None
    empty_note: str = "no data"
    styles: dict[str, str] = field(default_factory=dict)  # matplotlib format string per series name


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
    return plot_panels([Panel(series, xlabel=xlabel, ylabel=ylabel)], title, path)


def plot_panels(panels: list[Panel], title: str, path: Path) -> Path:
    """Panels side by side in one PNG (e.g. loss on the left, a metric on the right). Returns ``path``.

    One panel carries the title itself; several share it above them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = 8 if len(panels) == 1 else 5 * len(panels)
    figure, axes_list = plt.subplots(1, len(panels), figsize=(width, 4.5), squeeze=False)
    try:
        for panel, axes in zip(panels, axes_list[0], strict=True):
            _draw(panel, axes)
        if len(panels) == 1:
            axes_list[0][0].set_title(title)
        else:
            figure.suptitle(title)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path


def _draw(panel: Panel, axes) -> None:
    drawn = False
    for name, points in panel.series.items():
        points = [(float(x), float(y)) for x, y in points if y is not None]
        if not points:
            continue
        drawn = True
        xs, ys = zip(*points, strict=True)
        style = panel.styles.get(name)
        if style:
            axes.plot(xs, ys, style, label=name)
        elif len(points) <= 2:
            axes.plot(xs, ys, marker="D", linestyle="none", markersize=8, label=name)
        else:
            axes.plot(xs, ys, marker="." if len(points) < 40 else None, label=name)
    if not drawn:
        axes.text(0.5, 0.5, panel.empty_note, ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel(panel.xlabel)
    axes.set_ylabel(panel.ylabel)
    if panel.ylim:
        axes.set_ylim(*panel.ylim)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
