"""``hymba plot RUN``: a PNG of a training run's loss curves (needs matplotlib)."""

from __future__ import annotations

import argparse

from . import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot a training run's loss curves to a PNG",
                       description="Read RUN/metrics.jsonl and write the training and validation "
                                   "loss (and learning rate) against step to a PNG.")
    p.add_argument("run", metavar="RUN", help="run folder of hymba train")
    p.add_argument("--out", metavar="PNG", help="output file (default: RUN/loss.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.data import DataError
    from ..train.plot import plot_run

    try:
        path = plot_run(args.run, args.out)
    except (DataError, ImportError) as exc:
        raise CLIError(str(exc)) from None
    print(path)
    return 0
