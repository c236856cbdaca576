"""Data-parallel training on 1 vs N GPUs, DDP and FSDP2: same global batch, same data order,
loss, tokens/s and MFU.

    python benchmarks/train_2gpu.py [--preset hymba-125m] [--seq-len 2048] [--batch-size 16]
                                    [--steps 60] [--gpus 1 2] [--parallel ddp fsdp]
                                    [--gradient-checkpointing] [--data PATH ...] [--json out.json]

Each run is ``torchrun --nproc_per_node N -m hymba train --parallel P`` on the bundled corpus (or
``--data``) with bf16 autocast (FSDP: bf16 parameter gathers, float32 gradient reduction);
``--batch-size`` is the global micro-batch, split over the GPUs, so every run sees the same
sequences in the same order and should log the same losses up to bf16 noise. A one-GPU run is
made once (``--parallel`` applies to several). Tokens/s is the median over the steps after the
first ``--warmup`` (global tokens per second of wall time); MFU divides the matmul + attention
FLOPs of those tokens (forward x3, recomputation not counted) by the GPUs' measured bf16
matrix-product rate. The table compares every run with the first: the largest per-step loss
difference and the speed-up (the issue asks for >= 1.8x on two GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch


def run(gpus: int, parallel: str, args: argparse.Namespace, root: str) -> dict:
    out = os.path.join(root, f"gpus{gpus}-{parallel}")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
        "-m", "hymba", "train", "--preset", args.preset, "--seq-len", str(args.seq_len),
        "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--lr", str(args.lr),
        "--device", args.device, "--dtype", "bfloat16" if args.device == "cuda" else "float32",
        "--eval-every", str(args.steps),
        "--save-every", str(args.steps), "--seed", "0", "--sample-tokens", "0", "--no-progress",
        "--out", out, "--parallel", parallel,
    ]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if args.data:
        cmd += ["--data", *args.data]
    if args.tokenizer:
        cmd += ["--tokenizer", args.tokenizer]
    print("$ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    speed = statistics.median(r["tokens_per_s"] for r in records[args.warmup :])
    return dict(gpus=gpus, parallel=parallel if gpus > 1 else "-", losses=[r["loss"] for r in records], tokens_per_s=speed,
                final_loss=records[-1]["loss"], val_loss=records[-1].get("val_loss"),
                max_memory_gib=max(r.get("max_memory_gib", 0.0) for r in records))


def train_flops_per_token(args: argparse.Namespace) -> float:
    """Matmul + attention FLOPs of training on one token (forward and backward: 3 forwards) of
    the preset with the tokenizer's vocabulary (the bundled one unless ``--tokenizer``)."""
    from throughput import hymba_forward_flops

    from hymba import HymbaConfig, HymbaForCausalLM
    from hymba.tokenizer import load_tokenizer
    from hymba.train.bpe import bundled_data_dir

    vocab = len(load_tokenizer(args.tokenizer or bundled_data_dir()))
    with torch.device("meta"):  # shapes only
        model = HymbaForCausalLM(HymbaConfig.from_preset(args.preset, vocab_size=vocab))
    length = args.seq_len + model.config.num_memory_tokens
    return 3 * hymba_forward_flops(model, length, args.seq_len) / args.seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hymba-125m")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16, help="global micro-batch (sequences)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the speed median")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--parallel", nargs="+", choices=("ddp", "fsdp"), default=["ddp", "fsdp"],
                        help="schemes of the runs on several GPUs")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--data", nargs="+", help="training data (default: the bundled corpus)")
    parser.add_argument("--tokenizer", help="tokenizer folder of --data (default: the bundled BPE)")
    parser.add_argument("--device", default="cuda", help="cuda (NCCL, bf16) or cpu (gloo, fp32: a smoke test)")
    parser.add_argument("--workdir", help="run folders (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    rate = None
    if args.device == "cuda":  # measured here, before the runs, then the GPU is left to them
        from throughput import matmul_rate

        rate = matmul_rate()
        torch.cuda.empty_cache()
    flops_per_token = train_flops_per_token(args)
    plan = [(g, p) for g in args.gpus for p in (args.parallel if g > 1 else ["ddp"])]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(g, p, args, args.workdir or tmp) for g, p in plan]
    base = rows[0]
    print(f"\n{args.preset}, seq {args.seq_len}, global batch {args.batch_size}, {args.steps} steps, {args.device}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}")
    print(f"{'ranks':>5}  {'parallel':>8}  {'tokens/s':>10}  {'speed-up':>8}  {'MFU':>6}  {'final loss':>10}  "
          f"{'val loss':>8}  {'max |Δloss|':>11}  {'GiB/GPU':>7}")
    for r in rows:
        diff = max(abs(a - b) for a, b in zip(r["losses"], base["losses"]))
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["max_loss_diff"] = diff
        r["mfu"] = r["tokens_per_s"] * flops_per_token / (r["gpus"] * rate) if rate else None
        val = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['gpus']:>5}  {r['parallel']:>8}  {r['tokens_per_s']:>10.0f}  {r['speedup']:>7.2f}x  {mfu:>6}  "
              f"{r['final_loss']:>10.4f}  {val:>8}  {diff:>11.4f}  {r['max_memory_gib']:>7.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"settings": vars(args), "runs": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
