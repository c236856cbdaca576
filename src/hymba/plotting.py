"""Plotting helpers shared by the training and evaluation packages (matplotlib is optional)."""

from __future__ import annotations

from typing import Any


def require_matplotlib() -> Any:
    """The ``matplotlib.pyplot`` module with the file-only Agg backend, or a clear ImportError."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "plots need matplotlib: pip install matplotlib (hymba's test, eval and train extras "
            "include it)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
