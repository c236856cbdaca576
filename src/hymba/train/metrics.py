"""The metrics log of a run: ``metrics.jsonl`` (one JSON object per record) and, optionally,
TensorBoard event files in ``RUN/tensorboard`` (needs the ``tensorboard`` package)."""

from __future__ import annotations

import json
import os
from typing import Any


class MetricsLog:
    """Appends records (``{"step": ..., "loss": ..., ...}``) to ``folder/metrics.jsonl``; with
    ``tensorboard`` every other number of a record also becomes a scalar ``train/<key>``."""

    def __init__(self, folder: str, tensorboard: bool = False) -> None:
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("--tensorboard needs the tensorboard package: "
                                  "pip install 'hymba[train]' (or pip install tensorboard)") from None
            self.writer = SummaryWriter(os.path.join(folder, "tensorboard"))
        self.file = open(os.path.join(folder, "metrics.jsonl"), "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
