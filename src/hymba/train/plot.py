"""Loss curves of a run folder's ``metrics.jsonl`` as a PNG (matplotlib, optional)."""

from __future__ import annotations

import json
import os

from ..plotting import require_matplotlib
from .data import DataError


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise DataError(f"no metrics.jsonl in {run_dir}")
    with open(path, encoding="utf-8") as fh:
        try:
            records = [json.loads(line) for line in fh if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not JSON lines: {exc}") from None
    if not records:
        raise DataError(f"{path} has no records")
    return records


def plot_run(run_dir: str, path: str | None = None) -> str:
    """Training loss (and validation loss where logged) against step, plus the learning rate;
    written to ``path`` (default: ``RUN/loss.png``). Returns the path."""
    records = read_metrics(run_dir)
    plt = require_matplotlib()
    path = path or os.path.join(run_dir, "loss.png")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train loss", lw=1)
    val = [r for r in records if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    handles = list(ax.get_lines())
    if any("lr" in r for r in records):
        lr_ax = ax.twinx()
        handles += lr_ax.plot([r["step"] for r in records], [r.get("lr", 0.0) for r in records],
                              color="grey", ls=":", label="learning rate")
        lr_ax.set_ylabel("learning rate")
    # one legend for both axes, below the plot, where it covers neither curve
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=len(handles),
              fontsize=8, frameon=False)
    ax.set_title(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
