"""Tables and plots for the demo report: Markdown, JSON and PNG, each written atomically.

Pure presentation: it takes results already computed and never runs a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from boss_fast._validation import atomic_write

__all__ = ["markdown_table", "plot_quality", "plot_schedules", "save_json", "save_sample_grid", "save_text"]


def save_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def save_json(path: str | os.PathLike, obj: object) -> None:
    save_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def markdown_table(
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    metric: str,
    nfes: Sequence[int],
    digits: int = 2,
) -> str:
    """A Markdown table, one row per NFE and one column per schedule; the best entry of each row in bold.

    Args:
        results: ``results[schedule][nfe][metric]``.
        metric: which value to show ("fd", "rmse").
    """
    names = list(results)
    lines = ["| NFE | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for k in nfes:
        values = [results[name][k][metric] for name in names]
        best = min(values)
        cells = [f"**{v:.{digits}f}**" if v == best else f"{v:.{digits}f}" for v in values]
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


def plot_quality(
    results: Mapping[str, Mapping[int, Mapping[str, float]]],
    nfes: Sequence[int],
    path: str | os.PathLike,
    references: Mapping[str, float] | None = None,
) -> None:
    """FD and endpoint RMSE against NFE, one line per schedule (log scale); optional horizontal references."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"wspace": 0.3})
    for ax, metric, label in zip(
        axes, ("fd", "rmse"), ("FD to held-out digits", "endpoint RMSE vs 200-step"), strict=True
    ):
        for name, per_nfe in results.items():
            ax.plot(nfes, [per_nfe[k][metric] for k in nfes], marker="o", label=name)
        if metric == "fd" and references:
            for ref_name, value in references.items():
                ax.axhline(value, linestyle="--", color="gray", linewidth=1)
                ax.annotate(ref_name, (nfes[-1], value), fontsize=8, ha="right", va="bottom", color="gray")
        ax.set_xlabel("NFE (Euler steps)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.set_xticks(list(nfes))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    _save_figure(fig, path)


def plot_schedules(times_by_nfe: Mapping[int, np.ndarray], path: str | os.PathLike) -> None:
    """The Bellman step sizes for every budget: one row of step boundaries per NFE."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(times_by_nfe) + 1.2))
    for k, times in times_by_nfe.items():
        ax.plot(times, np.full_like(times, k), marker="|", markersize=12, linewidth=1)
    ax.set_xlabel("t (0 = noise, 1 = data)")
    ax.set_ylabel("NFE")
    ax.set_yticks(list(times_by_nfe))
    ax.set_xlim(-0.02, 1.02)
    ax.grid(True, axis="x", alpha=0.3)
    _save_figure(fig, path)


def save_sample_grid(rows: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "") -> None:
    """One row of images per entry: ``rows[name]`` is (M, 1, H, W) or (M, H, W) in [-1, 1]."""
    plt = _pyplot()
    names = list(rows)
    cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(
        len(names), cols, figsize=(0.6 * cols + 1.2, 0.65 * len(names) + 0.4), squeeze=False
    )
    for r, name in enumerate(names):
        images = np.asarray(rows[name]).reshape(len(rows[name]), *np.asarray(rows[name]).shape[-2:])
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.clip(images[c], -1, 1), cmap="gray_r", vmin=-1, vmax=1)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    _save_figure(fig, path)
