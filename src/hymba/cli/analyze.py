"""``hymba analyze``: attention mass on meta/first/self/other tokens and branch magnitudes."""

from __future__ import annotations

import argparse
import os

from ..jsonfile import write_json
from . import CLIError
from ._common import add_model_args, add_runtime_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="meta-token attention shares and attention/SSM branch magnitudes per layer",
        description="Run one text through the model and report, per layer, the share of attention "
                    "mass on meta tokens / the first token / the token itself / other tokens "
                    "(paper Fig. 7) and the mean |output| of the attention and SSM branches before "
                    "and after their norms (Fig. 12). Writes analysis.json and two PNG plots.")
    add_model_args(p)
    p.add_argument("--text", metavar="FILE", required=True, help="UTF-8 text file to analyse")
    p.add_argument("--max-tokens", type=int, default=1024, help="analyse at most this many tokens")
    p.add_argument("--out", metavar="DIR", default="analysis", help="output folder")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only")
    add_runtime_args(p)
    p.add_argument("--seed", type=int, default=0, help="init seed for --preset models")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..eval.analysis import analyze
    from ._common import load_model, require_plots

    require_plots(args)
    if args.max_tokens < 1:
        raise CLIError("--max-tokens must be >= 1")
    if not os.path.isfile(args.text):
        raise CLIError(f"text file {args.text} does not exist")
    with open(args.text, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    model = load_model(args)
    if args.model:
        from ..tokenizer import load_tokenizer

        ids = load_tokenizer(args.model).encode(text)
    else:  # a --preset model has no tokenizer: bytes, folded into its vocabulary
        ids = [b % model.config.vocab_size for b in text.encode("utf-8")]
    ids = ids[: args.max_tokens]
    if not ids:
        raise CLIError(f"{args.text} is empty")
    summary = analyze(model, torch.tensor([ids]))
    summary["model"] = args.model or args.preset
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "analysis.json"), summary)
    print(f"{summary['tokens']} tokens, {summary['num_meta']} meta tokens")
    print(f"{'layer':>5} {'meta':>6} {'first':>6} {'self':>6} {'other':>6} "
          f"{'|attn|':>8} {'|ssm|':>8} {'|attn|n':>8} {'|ssm|n':>8}")
    for row in summary["layers"]:
        share = row["attention_share"] or {}
        mags = row["branch_magnitude"]
        cells = [f"{share[k]:6.3f}" if share else f"{'-':>6}" for k in ("meta", "first", "self", "other")]
        for stage in ("before_norm", "after_norm"):
            for branch in ("attention", "ssm"):
                value = mags.get(branch, {}).get(stage)
                cells.append(f"{value:8.3f}" if value is not None else f"{'-':>8}")
        print(f"{row['layer']:>5} " + " ".join(cells))
    if not args.no_plots:
        from ..eval import plots

        title = os.path.basename(os.path.normpath(summary["model"] or "model"))
        plots.attention_shares(summary["layers"], os.path.join(args.out, "attention_shares.png"), title)
        plots.branch_magnitudes(summary["layers"], os.path.join(args.out, "branch_magnitudes.png"), title)
    print(f"wrote {os.path.join(args.out, 'analysis.json')}" + ("" if args.no_plots else " and 2 PNG plots"))
    return 0
