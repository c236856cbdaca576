"""``hymba ablate``: the small-scale design-roadmap ablation (paper Table 10)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator

from ..jsonfile import write_json
from . import CLIError
from ._common import add_runtime_args, require_plots, resolve_device

# The names of hymba.eval.ablation's BUDGETS and VARIANTS, restated so that building the parser
# (hymba --help) does not import torch; tests/cli/test_newcomer.py checks they agree.
BUDGET_NAMES = ("tiny", "small", "large")
VARIANT_KEYS = ("ssm", "ssm-meta", "attn", "attn-compressed", "hybrid-global", "hybrid-swa",
                "hybrid-swa3", "hybrid-kvshare", "hymba")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="train the design-roadmap variants on recall + text and compare them",
        description="Train every ablation variant (SSM-only, attention-only, attention with "
                    "Hymba's KV compression, hybrid all-global / all-SWA / SWA+3 global / +KV "
                    "sharing / +meta tokens) with the same budget on MQAR and byte-level text, then "
                    "report recall within and beyond the window, perplexity, cache MB and prefill "
                    "tokens/s as a Markdown table, JSON and PNG plots. Budgets: tiny (a smoke test, "
                    "about a minute on 2 cores), small (CPU, tens of minutes), large (one GPU).")
    p.add_argument("--budget", choices=BUDGET_NAMES, default="small",
                   help="training budget: tiny (a smoke test, about a minute), small (2-core CPU, tens of minutes), "
                        "large (one GPU)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of: " + ", ".join(VARIANT_KEYS) + " (default: all)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the budget's)")
    add_runtime_args(p, dtype=False)
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initialisation")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: ablation-BUDGET)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train up to N variants at once, each in its own process (logs in "
                        "DIR/parts/VARIANT.log); the small models leave a GPU mostly idle, so on "
                        "one GPU all nine fit side by side (default: 1, one after another)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--fresh", action="store_true",
                   help="retrain every variant (default: keep the results already in "
                        "DIR/ablation.json from a run with the same settings and seed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..eval import ablation

    require_plots(args)
    budget = ablation.BUDGETS[args.budget]
    if args.steps is not None:
        if args.steps < 1:
            raise CLIError("--steps must be >= 1")
        budget = dataclasses.replace(budget, steps=args.steps)
    names = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    device = resolve_device(args.device)
    out = args.out or f"ablation-{args.budget}"
    os.makedirs(out, exist_ok=True)
    bars: dict[str, tqdm] = {}

    def progress(key: str, steps_done: int, loss: float) -> None:
        if key not in bars:
            bars[key] = tqdm(total=budget.steps, desc=key, unit="step", leave=False)
        bars[key].update(steps_done - bars[key].n)
        bars[key].set_postfix(loss=f"{loss:.3f}", refresh=False)

    def done(row: dict) -> None:
        if row["key"] in bars:
            bars.pop(row["key"]).close()
        tqdm.write(f"{row['key']:<16} recall≤w {row['recall_within']:.3f}  recall>w "
                   f"{row['recall_beyond']:.3f}  ppl {row['ppl']:.3f}  cache {row['cache_mb']:.3f} MB  "
                   f"{row['tok_per_s']:.0f} tok/s  ({row['train_s']:.0f} s)")

    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    meta = {
        "budget": args.budget, "settings": json.loads(json.dumps(dataclasses.asdict(budget))), "device": device_name,
        "torch": torch.__version__, "python": platform.python_version(), "seed": args.seed,
        "date": datetime.date.today().isoformat(),
    }
    path = os.path.join(out, "ablation.json")
    done_rows = {} if args.fresh else _previous_rows(path, meta)
    order = [v[0] for v in ablation.VARIANTS]
    todo = [k for k in (names or order) if k not in done_rows]
    if not todo:  # only re-rendering the table and plots: keep where and when the rows were made
        with open(path, encoding="utf-8") as fh:
            meta.update({k: v for k, v in json.load(fh).items() if k in ("device", "torch", "python", "date")})
    if done_rows:
        print(f"keeping {len(done_rows)} variants from {path}; training {len(todo)}")

    def save() -> list[dict]:
        rows = [done_rows[k] for k in order if k in done_rows]  # this run's and earlier ones
        write_json(path, {**meta, "rows": rows})  # atomic: rewritten after every variant
        return rows

    def finished(row: dict) -> None:
        done(row)
        done_rows[row["key"]] = row
        save()  # after every variant, so an interrupted run can resume

    if args.jobs < 1:
        raise CLIError("--jobs must be >= 1")
    if todo and args.jobs > 1:
        for row in _run_in_processes(args, todo, out):
            finished(row)
    elif todo:
        ablation.run_ablation(budget, todo, device, args.seed, on_result=finished, progress=progress)
    rows = save()
    table = ablation.markdown_table(rows, budget)
    with open(os.path.join(out, "ablation.md"), "w", encoding="utf-8") as fh:
        fh.write(table)
    print(table, end="")
    if not args.no_plots:
        from ..eval import plots

        title = f"Hymba ablation, budget {args.budget} ({meta['device']})"
        plots.ablation_bars(rows, os.path.join(out, "ablation.png"), title)
        curves = [{**c, "model": r["key"]} for r in rows for c in r["curve"]]
        plots.recall_curves(curves, os.path.join(out, "recall_curves.png"), "MQAR accuracy", budget.window)
    print(f"wrote {os.path.join(out, 'ablation.json')}, ablation.md"
          + ("" if args.no_plots else ", ablation.png, recall_curves.png"))
    return 0


def _run_in_processes(args: argparse.Namespace, todo: list[str], out: str) -> Iterator[dict]:
    """Train each variant in a child ``hymba ablate`` (at most ``args.jobs`` at a time) and yield
    its row as it finishes. A child that fails is reported with the tail of its log."""
    parts = os.path.join(out, "parts")
    os.makedirs(parts, exist_ok=True)
    waiting, running = list(todo), {}
    failed = []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            key = waiting.pop(0)
            cmd = [sys.executable, "-m", "hymba", "ablate", "--budget", args.budget, "--variants", key,
                   "--device", args.device, "--seed", str(args.seed), "--no-plots",
                   "--out", os.path.join(parts, key)]
            if args.steps is not None:
                cmd += ["--steps", str(args.steps)]
            log = open(os.path.join(parts, f"{key}.log"), "w", encoding="utf-8")  # noqa: SIM115
            running[key] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
            print(f"started {key} (log: {log.name})", flush=True)
        time.sleep(1.0)
        for key, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[key]
            rows = _previous_rows(os.path.join(parts, key, "ablation.json"), None)
            if proc.returncode != 0 or key not in rows:
                with open(log.name, encoding="utf-8", errors="replace") as fh:
                    tail = "".join(fh.readlines()[-5:])
                print(f"{key} failed (exit {proc.returncode}):\n{tail}", flush=True)
                failed.append(key)
                continue
            yield rows[key]
    if failed:
        raise CLIError(f"variants failed: {', '.join(failed)} (see {parts}/*.log); rerun to retry them")


def _previous_rows(path: str, meta: dict | None) -> dict[str, dict]:
    """Rows of an earlier run in the same folder with the same budget settings and seed (any,
    if ``meta`` is None)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return {}
    if meta is not None and (old.get("settings") != meta["settings"] or old.get("seed") != meta["seed"]):
        return {}
    return {row["key"]: row for row in old.get("rows", [])}
