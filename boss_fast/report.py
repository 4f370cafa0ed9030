"""Tables and plots for the demo report: Markdown, JSON and PNG, each written atomically.

Pure presentation: it takes results already computed and never runs a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from boss_fast._validation import atomic_write

__all__ = [
    "markdown_table",
    "plot_quality",
    "plot_scatter",
    "plot_schedules",
    "save_json",
    "save_sample_grid",
    "save_text",
]


def save_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def save_json(path: str | os.PathLike, obj: object) -> None:
    save_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def markdown_table(
    results: Mapping[str, Mapping[int, Mapping[str, object]]],
    metric: str,
    nfes: Sequence[int],
    digits: int = 2,
    *,
    delta: str | None = None,
    baseline: str | None = None,
) -> str:
    """A Markdown table, one row per NFE and one column per schedule; the best entry of each row in bold.

    Args:
        results: ``results[schedule][nfe][metric]``.
        metric: which value to show ("fd", "rmse"); a budget missing from a schedule shows "-".
        delta: optional key of ``[estimate, low, high]``, a difference to ``baseline`` with its interval;
            shown after the value in percent of the baseline's value ("-12% [-15, -9]"); the baseline's own
            column shows none.
    """
    names = list(results)
    lines = ["| NFE | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for k in nfes:
        # A schedule may skip a budget (the oracle's stop at oracle_max_nfe): its cell is "-".
        values = [float(results[name][k][metric]) if k in results[name] else None for name in names]
        best = min(v for v in values if v is not None)
        cells = []
        for name, v in zip(names, values, strict=True):
            if v is None:
                cells.append("-")
                continue
            cell = f"**{v:.{digits}f}**" if v == best else f"{v:.{digits}f}"
            if delta is not None and name != baseline:
                base = float(results[baseline][k][metric])
                est, low, high = (100.0 * x / base if base > 0 else 0.0 for x in results[name][k][delta])
                cell += f" ({est:+.1f}% [{low:+.1f}, {high:+.1f}])"
            cells.append(cell)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save_figure(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or servers
    import matplotlib.pyplot as plt

    return plt


_METRIC_LABELS = {"fd": "FD to held-out digits", "rmse": "endpoint RMSE vs dopri5 reference"}


def plot_quality(
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    nfes: Sequence[int],
    path: str | os.PathLike,
    references: Mapping[str, float] | None = None,
    *,
    metrics: Sequence[str] = ("fd", "rmse"),
    title: str = "",
) -> None:
    """Each metric against NFE, one line per schedule (log scale); optional horizontal FD references."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(6 * len(metrics), 4), gridspec_kw={"wspace": 0.3}, squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        for name, per_nfe in results.items():
            ks = [k for k in nfes if k in per_nfe]
            ax.plot(ks, [per_nfe[k][metric] for k in ks], marker="o", label=name)
        if metric == "fd" and references:
            for ref_name, value in references.items():
                ax.axhline(value, linestyle="--", color="gray", linewidth=1)
                ax.annotate(ref_name, (nfes[-1], value), fontsize=8, ha="right", va="bottom", color="gray")
        ax.set_xlabel("NFE (Euler steps)")
        ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
        ax.set_yscale("log")
        ax.set_xticks(list(nfes))
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save_figure(fig, path)


def plot_schedules(
    schedules: Mapping[str, Mapping[int, np.ndarray]], path: str | os.PathLike, title: str = ""
) -> None:
    """Step boundaries for every budget, one row per NFE and one marker colour per schedule
    (``schedules[name][nfe]`` = times), the schedules offset slightly within a row."""
    plt = _pyplot()
    nfes = sorted({k for per in schedules.values() for k in per})
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(nfes) + 1.4))
    for i, (name, per) in enumerate(schedules.items()):
        offset = 0.25 * (i - (len(schedules) - 1) / 2)
        for j, k in enumerate(sorted(per)):
            times = np.asarray(per[k], dtype=float)
            ax.plot(times, np.full_like(times, k + offset), marker="|", markersize=9, linewidth=1,
                    color=f"C{i}", label=name if j == 0 else None)  # fmt: skip
    ax.set_xlabel("t (0 = noise, 1 = data)")
    ax.set_ylabel("NFE")
    ax.set_yticks(nfes)
    ax.set_xlim(-0.02, 1.02)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title, fontsize=10)
    _save_figure(fig, path)


def plot_scatter(
    samples: Mapping[int, Mapping[str, np.ndarray]],
    reference: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """2-D samples per schedule beside the reference: one row per NFE (``samples[nfe][name]`` is (n, 2)),
    the reference (n, 2) in the last column of every row."""
    plt = _pyplot()
    rows = sorted(samples)
    names = list(dict.fromkeys(name for k in rows for name in samples[k]))
    cols = len(names) + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.2 * len(rows)), squeeze=False)
    reference = np.asarray(reference)
    lim = float(np.abs(reference).max()) * 1.25
    for r, k in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            name = names[c] if c < len(names) else "dopri5 reference"
            points = np.asarray(samples[k][name]) if c < len(names) and name in samples[k] else reference
            ax.scatter(points[:, 0], points[:, 1], s=1.5, alpha=0.5, color="C3" if c == len(names) else "C0")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            if r == 0:
                ax.set_title(name, fontsize=7)
        axes[r, 0].set_ylabel(f"NFE = {k}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save_figure(fig, path)


def save_sample_grid(rows: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "") -> None:
    """One row of images per entry: ``rows[name]`` is (M, 1, H, W) or (M, H, W) in [-1, 1]. The images
    are tiled into one mosaic (a 1-pixel white gap between tiles) drawn by one ``imshow``: one axes for the
    whole grid instead of one per image, which is what made this figure slow."""
    plt = _pyplot()
    names = list(rows)
    images = [np.asarray(rows[name]).reshape(-1, *np.asarray(rows[name]).shape[-2:]) for name in names]
    cols = max(len(v) for v in images)
    h, w = images[0].shape[-2:]
    mosaic = np.full((len(names) * (h + 1) - 1, cols * (w + 1) - 1), -1.0)  # -1 is white in gray_r
    for r, tiles in enumerate(images):
        for c, image in enumerate(tiles):
            mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = np.clip(image, -1, 1)
    fig, ax = plt.subplots(figsize=(0.6 * cols + 1.2, 0.65 * len(names) + 0.4))
    ax.imshow(mosaic, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(len(names))], names, fontsize=8)
    ax.tick_params(left=False)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    _save_figure(fig, path)
