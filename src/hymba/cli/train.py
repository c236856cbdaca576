"""``hymba train``: train from scratch, fine-tune (``--init-from``) or resume (``--resume``).

With no arguments it trains the ``tiny`` preset on the bundled Shakespeare + Milton corpus on the
CPU for a few minutes and writes ``./hymba-run``. ``--init-from DIR --lora r=16,alpha=32`` trains
LoRA adapters on a checkpoint instead of its weights (``hymba merge-lora`` merges them). Ctrl-C
saves the current step as a checkpoint and stops (a second Ctrl-C aborts at once). Settings come
from, lowest priority first: the built-in defaults, the saved arguments of a ``--resume`` run,
``--config FILE`` (YAML, JSON or TOML with the same names as the flags, plus a ``model`` table of
config overrides), the flags.

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

# TrainArgs' defaults as --help shows them; tests/cli/test_newcomer.py checks them against TrainArgs.
DEFAULTS = {
    "preset": "tiny", "data": "the bundled corpus", "out": "hymba-run",
    "tokenizer": "--init-from's, else the bundled BPE", "resume": "none", "init_from": "none",
    "max_steps": 160, "seq_len": 128, "batch_size": 16, "grad_accum": 1, "lr": 0.003,
    "min_lr": 1e-05, "schedule": "wsd", "warmup": 0.01, "weight_decay": 0.1, "grad_clip": 1.0,
    "val_fraction": 0.02, "eval_every": 40, "save_every": 80, "keep_checkpoints": 2, "device": "auto",
    "dtype": "bfloat16 on CUDA, float32 on CPU", "seed": 0,
    "threads": "1 for hidden size <= 256, else PyTorch's default",
    "sample_prompt": "To be, or not to be", "sample_tokens": 60, "rewarm": False,
    "parallel": "auto", "cpu_offload": False, "lora": "none",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train or fine-tune a model (no arguments: a small demo run on bundled text)",
        description="Train a Hymba model. With no arguments: the 'tiny' preset on the bundled "
                    "Shakespeare + Milton corpus, on the CPU, a few minutes; output in ./hymba-run. "
                    "Ctrl-C finishes the current step, saves it as a checkpoint and prints the "
                    "command that resumes the run (a second Ctrl-C aborts at once).",
    )
    S = argparse.SUPPRESS  # unset flags stay absent so that lower layers show through

    def flag(*names: str, help: str, **kwargs) -> None:
        """A flag whose help ends with TrainArgs' default (restated in DEFAULTS: importing
        hymba.train imports torch, which --help should not wait for)."""
        dest = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
        shown = DEFAULTS.get(_RENAMED.get(dest, dest))
        text = help if shown is None else f"{help} (default: {shown})"
        p.add_argument(*names, default=S, help=text.replace("%", "%%"), **kwargs)

    p.add_argument("--config", metavar="FILE",
                   help="training settings (.yaml, .json or .toml; default: none, the flags and defaults)")
    flag("--preset", help="model shape for a from-scratch run")
    flag("--data", nargs="+", metavar="PATH",
         help=".txt, .jsonl ('text' or chat 'messages'), .parquet files (.gz allowed), folders, "
              "saved HF datasets, or one 'hymba tokenize' folder")
    flag("--tokenizer", metavar="DIR", help="folder with tokenizer.json")
    flag("--out", metavar="DIR", help="run folder")
    flag("--overwrite", action="store_true", help="replace an existing run folder")
    flag("--resume", metavar="DIR", help="continue a run (run folder or checkpoint)")
    flag("--init-from", metavar="DIR", help="fine-tune a released-format checkpoint")
    flag("--lora", metavar="SPEC",
         help="train LoRA adapters on the --init-from model instead of its weights, e.g. "
              "r=16,alpha=32[,dropout=0.05][,targets=in_proj,out_proj,gate_proj,up_proj,down_proj,x_proj] "
              "(default targets: in_proj, out_proj and the MLP; needs peft: pip install 'hymba[hf]'). "
              "Checkpoints and final/ hold the adapter; 'hymba merge-lora' merges it")
    flag("--max-steps", type=int,
         help="optimizer steps of the run. With --resume, a new value extends or shortens the run: a "
              "schedule that has not begun its decay moves the decay to the new end; one that has goes "
              "on, so extra steps after a finished decay train at --min-lr (see --rewarm)")
    flag("--rewarm", action="store_true",
         help="with --resume: start a new learning-rate phase from the resumed step to --max-steps "
              "(warmup to --lr, stable, decay to --min-lr), e.g. to extend a finished run at full rate")
    flag("--seq-len", type=int, help="tokens per training sequence")
    flag("--batch-size", type=int, help="sequences per micro-batch")
    flag("--grad-accum", type=int, help="micro-batches per optimizer step")
    flag("--lr", type=float, help="peak learning rate")
    flag("--min-lr", type=float, help="learning rate at the end of the decay")
    flag("--schedule", choices=("wsd", "cosine"), help="learning-rate schedule: warmup-stable-decay or cosine")
    flag("--warmup", type=float, help="warmup: fraction of steps if < 1, else steps")
    flag("--weight-decay", type=float, help="AdamW weight decay (not on norms, biases, meta tokens, A_log, D)")
    flag("--grad-clip", type=float, help="max gradient norm (0: off)")
    flag("--val-fraction", type=float, help="share of the data held out for validation")
    flag("--eval-every", type=int, help="steps between validation runs")
    flag("--save-every", type=int, help="steps between checkpoints")
    flag("--keep", type=int, help="numbered checkpoints to keep (0: all)")
    flag("--device", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    flag("--dtype", choices=("float32", "bfloat16"),
         help="compute dtype: bfloat16 autocast (weights stay float32) or float32")
    flag("--seed", type=int, help="random seed")
    flag("--gradient-checkpointing", action="store_true",
         help="recompute activations in the backward pass (less memory, slower)")
    flag("--threads", type=int, help="CPU threads")
    flag("--sample-prompt", help="prompt of the sample printed at the end")
    flag("--sample-tokens", type=int, help="length of that sample (0: none)")
    flag("--tensorboard", action="store_true", help="also log the metrics for TensorBoard in OUT/tensorboard")
    flag("--compile", action="store_true", help="torch.compile the model (slow start; pays off on long GPU runs)")
    flag("--cuda-graph", action="store_true",
         help="replay each micro-step as one CUDA graph (one GPU; cuts the host's launch time)")
    flag("--parallel", choices=("auto", "ddp", "fsdp"),
         help="under torchrun: ddp replicates the model on every process, fsdp shards parameters, "
              "gradients and optimizer state (FSDP2; sharded checkpoints), auto picks DDP when they fit "
              "the device with room for activations")
    flag("--cpu-offload", action="store_true",
         help="with --parallel fsdp: keep the parameter shards, gradients and optimizer state in host "
              "memory (slower; for models whose training state does not fit the GPUs)")
    flag("--no-progress", dest="progress", action="store_false", help="no progress bar")
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
    what = (f"{summary['trainable_parameters']:,} LoRA adapter parameters (on a {summary['parameters']:,}-parameter "
            "model)" if summary["lora"] else f"{summary['parameters']:,} parameters")
    print(f"trained {what} for {steps} "
          f"in {summary['wall_s']:.0f} s ({summary['tokens_per_s']:.0f} tokens/s)")
    print(f"final train loss {summary['train_loss']:.4f} (mean of the last 10 steps), "
          f"validation loss {summary['val_loss']:.4f}, "
          f"unigram baseline {summary['unigram_entropy']:.4f} (nats/token)")
    if summary["lora"]:
        print(f"adapter: {summary['final']}   metrics: {os.path.join(summary['out'], 'metrics.jsonl')}")
        print("merge it into a released-format model with: hymba merge-lora "
              f"--base {shlex.quote(summary['base'])} --adapter {shlex.quote(summary['final'])} --out MERGED_DIR")
    else:
        print(f"model: {summary['final']}   metrics: {os.path.join(summary['out'], 'metrics.jsonl')}")
    if summary["sample"]:
        print("sample:\n" + summary["sample"])
    return 0
