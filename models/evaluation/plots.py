"""Shared plotting helpers (matplotlib, Agg backend): learning curves and similar step/value series, and the
evaluation's confusion matrices and reliability diagram."""

from __future__ import annotations

import math
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


# ------------------------------------------------------------------------------------------------- evaluation


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(matrix, labels: list[str], path: Path) -> Path:
    """Counts (left) and row-normalised rates (right): rows are the true labels."""
    import numpy as np

    plt = _pyplot()
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = max(4.0, 0.6 * len(labels) + 2.5)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for axis, values, title, fmt in (
        (axes[0], matrix, "counts", "d"),
        (axes[1], normalised, "row-normalised", ".2f"),
    ):
        image = axis.imshow(values, cmap="Blues", vmin=0)
        axis.set_title(title)
        axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        limit = values.max() if values.size else 0
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                axis.text(
                    j,
                    i,
                    format(values[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if limit and values[i, j] > 0.6 * limit else "black",
                )
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_multilabel_confusion(matrices, labels: list[str], path: Path) -> Path:
    """One 2x2 matrix (no/yes) per label for multi-label models."""
    plt = _pyplot()
    columns = min(4, len(labels))
    rows = math.ceil(len(labels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for index, axis in enumerate(axes.ravel()):
        if index >= len(labels):
            axis.axis("off")
            continue
        matrix = matrices[index]
        axis.imshow(matrix, cmap="Blues", vmin=0)
        axis.set_title(labels[index])
        axis.set_xticks([0, 1], ["no", "yes"])
        axis.set_yticks([0, 1], ["no", "yes"])
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        for i in range(2):
            for j in range(2):
                axis.text(j, i, str(matrix[i, j]), ha="center", va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def plot_reliability(bins: list[dict], ece: float, path: Path) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, plus the bin counts."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = 1.0 / max(len(bins), 1)
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    top.bar(
        centres,
        [b["accuracy"] or 0.0 for b in bins],
        width=width * 0.95,
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"reliability (ECE {ece:.3f})")
    top.legend(loc="upper left")
    bottom.bar(centres, [b["count"] for b in bins], width=width * 0.95, color="tab:orange")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("count")
    bottom.set_xlim(0, 1)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
