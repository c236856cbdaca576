"""PNG plots for the recall benchmarks, the analysis and the ablation (matplotlib, optional)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..plotting import require_matplotlib


def recall_curves(rows: Sequence[dict], path: str | os.PathLike, title: str, window: int | None = None) -> None:
    """Accuracy against length, one line per (model, task); a dotted line marks the window."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        name = f"{row['model']} {row['task']}" if row.get("model") else row["task"]
        series.setdefault(name, []).append((row["length"], row["accuracy"]))
    for name, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if window:
        ax.axvline(window, color="grey", linestyle=":", label=f"window {window}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def attention_shares(layers: Sequence[dict], path: str | os.PathLike, title: str) -> None:
    """Stacked bars per layer: share of attention mass on meta / first / self / other tokens."""
    plt = require_matplotlib()
    parts = ["meta", "first", "self", "other"]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(layers)), 4.0))
    x = [row["layer"] for row in layers]
    bottom = [0.0] * len(layers)
    for part in parts:
        heights = [row["attention_share"][part] for row in layers]
        ax.bar(x, heights, bottom=bottom, label=part)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xlabel("layer")
    ax.set_ylabel("share of attention mass")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def branch_magnitudes(layers: Sequence[dict], path: str | os.PathLike, title: str) -> None:
    """Mean |output| of the attention and SSM branches per layer, before and after their norms."""
    plt = require_matplotlib()
    fig, (raw, normed) = plt.subplots(1, 2, figsize=(10, 4.0))
    for ax, stage in ((raw, "before_norm"), (normed, "after_norm")):
        for branch, style in (("attention", "o-"), ("ssm", "s-")):
            points = [(r["layer"], r["branch_magnitude"][branch][stage])
                      for r in layers if branch in r["branch_magnitude"]]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=branch)
        ax.set_xlabel("layer")
        ax.set_ylabel("mean |output|")
        ax.set_title(f"{title}: {stage.replace('_', ' ')}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation_bars(rows: Sequence[dict], path: str | os.PathLike, title: str) -> None:
    """Recall below/beyond the window and perplexity per variant (two panels)."""
    plt = require_matplotlib()
    names = [r["variant"] for r in rows]
    fig, (rec, ppl) = plt.subplots(1, 2, figsize=(12, 4.6))
    width = 0.38
    xs = range(len(rows))
    rec.bar([x - width / 2 for x in xs], [r["recall_within"] for r in rows], width, label="within window")
    rec.bar([x + width / 2 for x in xs], [r["recall_beyond"] for r in rows], width, label="beyond window")
    rec.set_ylabel("MQAR accuracy")
    rec.set_ylim(0, 1)
    rec.legend(fontsize=8)
    ppl.bar(list(xs), [r["ppl"] for r in rows], color="tab:green")
    ppl.set_ylabel("perplexity (bytes)")
    for ax in (rec, ppl):
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
