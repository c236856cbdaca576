"""``hymba bench recall``: recall accuracy at lengths below and beyond the sliding window."""

from __future__ import annotations

import argparse

from ..jsonfile import write_json
from . import CLIError
from ._common import add_model_args, add_runtime_args, check_output_file


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("values must be positive")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError("depths must lie in [0, 1]")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks of a model (recall)",
                       description="Benchmarks of a model.")
    benches = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    r = benches.add_parser(
        "recall", help="MQAR, needle-in-a-haystack and pass-key recall against length",
        description="Recall accuracy at several lengths. 'mqar' and 'niah' are synthetic token "
                    "tasks for models trained on them (hymba ablate); 'passkey' is a text task for "
                    "any checkpoint with a tokenizer.")
    add_model_args(r)
    r.add_argument("--task", choices=("mqar", "niah", "passkey"), nargs="+", default=["mqar", "niah"],
                   help="one or more tasks")
    r.add_argument("--lengths", type=_ints, default=None,
                   help="comma-separated lengths (default: window/2 … 8×window)")
    r.add_argument("--samples", type=int, default=32, help="sequences per length (and depth)")
    r.add_argument("--pairs", type=int, default=8, help="MQAR key-value pairs per sequence")
    r.add_argument("--queries", type=int, default=None, help="MQAR queries per sequence (default: pairs)")
    r.add_argument("--num-keys", type=int, default=64, help="synthetic key ids (as in training)")
    r.add_argument("--num-values", type=int, default=64, help="synthetic value ids (as in training)")
    r.add_argument("--depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="needle depths in [0, 1]")
    r.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    add_runtime_args(r)
    r.add_argument("--seed", type=int, default=0, help="init seed for --preset models")
    r.add_argument("--json", metavar="PATH", help="also write the rows as JSON (default: not written)")
    r.add_argument("--plot", metavar="PNG", help="also plot accuracy against length to this PNG (needs matplotlib; default: no plot)")
    r.set_defaults(func=run_recall)


def default_lengths(config, shortest: int) -> list[int]:
    """window/2 … 8×window, at least ``shortest`` and at most the config's max positions."""
    window = config.sliding_window or 1024
    top = config.max_position_embeddings
    return sorted({max(shortest, min(top, int(window * f))) for f in (0.5, 1, 2, 4, 8)})


def format_detail(row: dict) -> str:
    """A row's per-query or per-depth accuracies as one short line."""
    if row.get("per_query"):
        return "per query " + " ".join(f"{x:.2f}" for x in row["per_query"])
    if row.get("per_depth"):
        return "per depth " + ", ".join(f"{float(d):g}: {v:.2f}" for d, v in row["per_depth"].items())
    return ""


def run_recall(args: argparse.Namespace) -> int:
    from ..eval import recall

    if args.plot:
        from ..eval.plots import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    if args.samples < 1 or args.batch_size < 1:
        raise CLIError("--samples and --batch-size must be >= 1")
    check_output_file(args.json)
    from ._common import load_model

    model = load_model(args)
    config = model.config
    queries = args.pairs if args.queries is None else args.queries
    lengths = args.lengths or default_lengths(config, 1 + 2 * args.pairs + 2 * queries)
    synthetic = [t for t in args.task if t != "passkey"]
    if synthetic:
        vocab = recall.SyntheticVocab(config.vocab_size, args.num_keys, args.num_values)
    if "passkey" in args.task:
        if not args.model:
            raise CLIError("--task passkey needs --model DIR with a tokenizer")
        from ..tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    measure = {
        "mqar": lambda ls: recall.mqar_accuracy(model, vocab, ls, args.samples, args.pairs, args.queries,
                                                batch_size=args.batch_size),
        "niah": lambda ls: recall.needle_accuracy(model, vocab, ls, args.depths, args.samples,
                                                  batch_size=args.batch_size),
        "passkey": lambda ls: recall.passkey_accuracy(model, tokenizer, ls, args.depths, args.samples,
                                                      batch_size=args.batch_size),
    }
    window = config.sliding_window
    print(f"{'task':<8} {'length':>7} {'vs window':>9} {'accuracy':>9}  detail", flush=True)
    rows: list[dict] = []
    for task in ("mqar", "niah", "passkey"):
        if task not in args.task:
            continue
        for length in lengths:  # one length at a time, so that each row shows as soon as it is done
            for row in measure[task]([length]):
                rows.append(row)
                where = "-" if not window else ("within" if row["length"] <= window else "beyond")
                print(f"{row['task']:<8} {row['length']:>7} {where:>9} {row['accuracy']:>9.3f}  "
                      f"{format_detail(row)}", flush=True)
    if args.json:
        write_json(args.json, {"model": args.model or args.preset, "window": window, "rows": rows})
    if args.plot:
        from ..eval.plots import recall_curves

        recall_curves(rows, args.plot, f"recall: {args.model or args.preset}", window)
    return 0
