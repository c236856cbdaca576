"""``hymba train``: train from scratch, fine-tune (``--init-from``) or resume (``--resume``).

With no arguments it trains the ``tiny`` preset on the bundled Shakespeare + Milton corpus on the
CPU for a few minutes and writes ``./hymba-run``. Ctrl-C saves the current step as a
checkpoint and stops (a second Ctrl-C aborts at once). Settings come from, lowest priority first:
the built-in defaults, the saved arguments of a ``--resume`` run, ``--config FILE`` (YAML, JSON
or TOML with the same names as the flags, plus a ``model`` table of config overrides), the flags.

Several GPUs or nodes: launch it with ``torchrun`` (``torchrun --nproc-per-node 8 -m hymba train
...``; on several nodes add ``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id
ID`` on each); ``--parallel`` chooses DDP or FSDP2 sharding, and ``hymba export`` turns a sharded
checkpoint into the released format.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from typing import Any

from . import CLIError

# flag dest -> TrainArgs field, for flags whose names differ
_RENAMED = {"keep": "keep_checkpoints"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train or fine-tune a model (no arguments: a small demo run on bundled text)",
        description="Train a Hymba model. With no arguments: the 'tiny' preset on the bundled "
                    "Shakespeare + Milton corpus, on the CPU, a few minutes; output in ./hymba-run. "
                    "Ctrl-C finishes the current step, saves it as a checkpoint and prints the "
                    "command that resumes the run (a second Ctrl-C aborts at once).",
    )
    S = argparse.SUPPRESS  # unset flags stay absent so that lower layers show through
    p.add_argument("--config", metavar="FILE", help="training settings (.yaml, .json or .toml)")
    p.add_argument("--preset", default=S, help="model shape for a from-scratch run (default: tiny)")
    p.add_argument("--data", nargs="+", metavar="PATH", default=S,
                   help=".txt, .jsonl ('text' or chat 'messages'), .parquet files (.gz allowed), folders, "
                        "saved HF datasets, or one 'hymba tokenize' folder (default: bundled corpus)")
    p.add_argument("--tokenizer", metavar="DIR", default=S,
                   help="folder with tokenizer.json (default: --init-from's, else the bundled BPE)")
    p.add_argument("--out", metavar="DIR", default=S, help="run folder (default: ./hymba-run)")
    p.add_argument("--overwrite", action="store_true", default=S, help="replace an existing run folder")
    p.add_argument("--resume", metavar="DIR", default=S, help="continue a run (run folder or checkpoint)")
    p.add_argument("--init-from", metavar="DIR", default=S, help="fine-tune a released-format checkpoint")
    p.add_argument("--max-steps", type=int, default=S,
                   help="optimizer steps of the run (default: 160). With --resume, a new value extends "
                        "or shortens the run: a schedule that has not begun its decay moves the decay "
                        "to the new end; one that has goes on, so extra steps after a finished decay "
                        "train at --min-lr (see --rewarm)")
    p.add_argument("--rewarm", action="store_true", default=S,
                   help="with --resume: start a new learning-rate phase from the resumed step to "
                        "--max-steps (warmup to --lr, stable, decay to --min-lr), e.g. to extend a "
                        "finished run at full rate")
    p.add_argument("--seq-len", type=int, default=S)
    p.add_argument("--batch-size", type=int, default=S, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=int, default=S, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=S, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=S)
    p.add_argument("--schedule", choices=("wsd", "cosine"), default=S)
    p.add_argument("--warmup", type=float, default=S, help="warmup: fraction of steps if < 1, else steps")
    p.add_argument("--weight-decay", type=float, default=S)
    p.add_argument("--grad-clip", type=float, default=S, help="max gradient norm (0: off)")
    p.add_argument("--val-fraction", type=float, default=S)
    p.add_argument("--eval-every", type=int, default=S)
    p.add_argument("--save-every", type=int, default=S)
    p.add_argument("--keep", type=int, default=S, help="numbered checkpoints to keep (0: all)")
    p.add_argument("--device", default=S, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=S,
                   help="compute dtype: bfloat16 autocast (weights stay float32) or float32 "
                        "(default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--gradient-checkpointing", action="store_true", default=S)
    p.add_argument("--threads", type=int, default=S,
                   help="CPU threads (default: 1 for hidden size <= 256, else PyTorch's default)")
    p.add_argument("--sample-prompt", default=S, help="prompt of the sample printed at the end")
    p.add_argument("--sample-tokens", type=int, default=S, help="length of that sample (0: none)")
    p.add_argument("--tensorboard", action="store_true", default=S,
                   help="also log the metrics for TensorBoard in OUT/tensorboard")
    p.add_argument("--compile", action="store_true", default=S,
                   help="torch.compile the model (slow start; pays off on long GPU runs)")
    p.add_argument("--cuda-graph", action="store_true", default=S,
                   help="replay each micro-step as one CUDA graph (one GPU; cuts the host's launch time)")
    p.add_argument("--parallel", choices=("auto", "ddp", "fsdp"), default=S,
                   help="under torchrun: ddp replicates the model on every process, fsdp shards "
                        "parameters, gradients and optimizer state (FSDP2; sharded checkpoints), auto "
                        "(default) picks DDP when they fit the device with room for activations")
    p.add_argument("--cpu-offload", action="store_true", default=S,
                   help="with --parallel fsdp: keep the parameter shards, gradients and optimizer state "
                        "in host memory (slower; for models whose training state does not fit the GPUs)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    p.set_defaults(func=run)


def read_config_file(path: str) -> dict[str, Any]:
    """Settings from a YAML, JSON or TOML file (a mapping)."""
    if not os.path.isfile(path):
        raise CLIError(f"config file {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise CLIError("reading a YAML config needs PyYAML (pip install pyyaml)") from None
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        elif ext == ".toml":
            import tomllib

            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        elif ext == ".json":
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            raise CLIError(f"config file {path}: use .yaml, .json or .toml")
    except CLIError:
        raise
    except Exception as exc:  # the parsers' own error types differ
        raise CLIError(f"cannot parse {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file {path} must hold a mapping of settings")
    return {_RENAMED.get(k.replace("-", "_"), k.replace("-", "_")): v for k, v in data.items()}


def _saved_args(resume: str) -> dict[str, Any]:
    from ..train.checkpointing import read_trainer_state, resolve_resume

    saved = read_trainer_state(resolve_resume(resume)).get("args", {})
    return {k: v for k, v in saved.items() if k not in ("resume", "overwrite", "init_from", "rewarm")}


def _run_folder(resume: str) -> str:
    from ..train.checkpointing import STATE_NAME

    return os.path.dirname(os.path.abspath(resume)) if os.path.isfile(os.path.join(resume, STATE_NAME)) else resume


def build_train_args(args: argparse.Namespace):
    """Merge defaults, a resumed run's arguments, the config file and the flags."""
    from ..config import numbers_from_text
    from ..train import TrainArgs

    flags = {_RENAMED.get(k, k): v for k, v in vars(args).items() if k not in ("config", "func", "command")}
    if "preset" in flags and ("init_from" in flags or "resume" in flags):
        raise CLIError("--preset shapes a from-scratch run; --init-from and --resume keep their checkpoint's shape")
    settings: dict[str, Any] = {}
    if flags.get("resume"):
        settings.update(_saved_args(flags["resume"]))
        settings["out"] = _run_folder(flags["resume"])
    if args.config:
        settings.update(numbers_from_text(read_config_file(args.config), TrainArgs))
    settings.update(flags)
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TrainArgs)})
    if unknown:
        raise CLIError(f"unknown training setting(s): {', '.join(unknown)}")
    return TrainArgs(**settings)


def run(args: argparse.Namespace) -> int:
    from ..train import DataError, TrainError, TrainInterrupted, train

    train_args = build_train_args(args)
    try:
        summary = train(train_args)
    except (TrainError, DataError) as exc:
        raise CLIError(str(exc)) from None
    except TrainInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"interrupted at step {stop.step}; resume with: hymba train --resume {shlex.quote(stop.out)}",
                  file=sys.stderr, flush=True)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    trained = summary["trained_steps"]
    steps = f"{trained} step{'' if trained == 1 else 's'}"
    if trained != summary["steps"]:
        steps += f" (resumed; now at step {summary['steps']})"
    print(f"trained {summary['parameters']:,} parameters for {steps} "
          f"in {summary['wall_s']:.0f} s ({summary['tokens_per_s']:.0f} tokens/s)")
    print(f"final train loss {summary['train_loss']:.4f} (mean of the last 10 steps), "
          f"validation loss {summary['val_loss']:.4f}, "
          f"unigram baseline {summary['unigram_entropy']:.4f} (nats/token)")
    print(f"model: {summary['final']}   metrics: {os.path.join(summary['out'], 'metrics.jsonl')}")
    if summary["sample"]:
        print("sample:\n" + summary["sample"])
    return 0
