"""Quality cost of weight-only quantization (hymba.quantize): perplexity on held-out text of a
trained checkpoint before and after int8 / int4, and the logits' error against the unquantized
model.

    python benchmarks/quant_quality.py --run /tmp/qrun [--modes int8 int4] [--json out.json]

``--run``: a ``hymba train`` run folder. The model is its ``final`` folder (else its newest
checkpoint); the held-out text is the run's own validation rows (every ``1/val_fraction``-th packed
sequence of its data, never trained on), rebuilt from the newest checkpoint's ``trainer_state.json``
with the run's tokenizer. Each row is scored on its own (``seq_len`` tokens, no carried context).

Reported per model (unquantized, then each mode): loss (nats/token) and perplexity over the
held-out rows, and against the unquantized model's logits on the same rows: the largest absolute
error, the relative error (largest absolute error over the largest logit magnitude, and the norm
of the error over the norm of the logits, both per row then the worst and the mean), and the
fraction of positions whose top-1 token agrees. ``--dtype bfloat16`` quantizes from bf16 weights
and compares against bf16 (the issue's baseline on a GPU); the default is the checkpoint's dtype.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from hymba import HymbaForCausalLM, load_tokenizer
from hymba.model.quantize import QUANT_MODES, quantized_layers
from hymba.ops.linear.quantized import is_quantized
from hymba.train.bpe import BUNDLED_CORPUS, bundled_data_dir
from hymba.train.checkpointing import list_checkpoints, read_trainer_state
from hymba.train.data import load_rows
from hymba.train.shards import split_labels


def run_model_dir(run: str) -> str:
    """The run's final model folder, else its newest checkpoint."""
    final = os.path.join(run, "final")
    if os.path.isfile(os.path.join(final, "config.json")):
        return final
    found = list_checkpoints(run)
    if not found:
        sys.exit(f"quant_quality: {run} has neither a final model nor a checkpoint")
    return found[-1][1]


def held_out_rows(run: str, model_dir: str, max_rows: int | None) -> tuple[torch.Tensor, dict]:
    """The run's validation rows (input ids with negated no-loss tokens) and the settings they
    were rebuilt from."""
    found = list_checkpoints(run)
    if not found:
        sys.exit(f"quant_quality: {run} has no checkpoint with a trainer_state.json")
    args = read_trainer_state(found[-1][1])["args"]
    paths = args.get("data") or [os.path.join(bundled_data_dir(), BUNDLED_CORPUS)]
    rows = load_rows(paths, load_tokenizer(model_dir), args["seq_len"], args["val_fraction"]).val
    rows = torch.as_tensor(rows[: max_rows or len(rows)])
    return rows, dict(data=paths, seq_len=args["seq_len"], val_fraction=args["val_fraction"], rows=len(rows))


@torch.no_grad()
def logits_and_nll(model: HymbaForCausalLM, rows: torch.Tensor, batch_size: int) -> tuple[list[torch.Tensor], float, int]:
    """Per-batch logits (float32, on the CPU), the summed next-token NLL and the scored tokens."""
    device = next(model.parameters()).device
    out, nll, tokens = [], 0.0, 0
    for start in range(0, len(rows), batch_size):
        ids, labels = split_labels(rows[start:start + batch_size].to(device))
        logits = model(ids).logits
        target = labels[:, 1:]
        nll += F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=-100,
                               reduction="sum").item()
        tokens += int((target != -100).sum())
        out.append(logits.cpu())
    return out, nll, tokens


def logit_errors(reference: list[torch.Tensor], got: list[torch.Tensor]) -> dict:
    """Errors of ``got`` against ``reference`` (lists of (b, n, vocab) logits): the largest
    absolute error; per row, that error over the row's largest logit magnitude and the error norm
    over the logits' norm (worst and mean over rows); the top-1 agreement over all positions."""
    max_abs, rel_max, rel_norm, agree, positions = 0.0, [], [], 0, 0
    for ref, new in zip(reference, got):
        err = (new - ref).abs()
        max_abs = max(max_abs, err.max().item())
        rel_max += (err.flatten(1).amax(1) / ref.abs().flatten(1).amax(1)).tolist()
        rel_norm += ((new - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).tolist()
        agree += int((new.argmax(-1) == ref.argmax(-1)).sum())
        positions += ref.shape[0] * ref.shape[1]
    return dict(max_abs=max_abs, rel_max_worst=max(rel_max), rel_max_mean=sum(rel_max) / len(rel_max),
                rel_norm_worst=max(rel_norm), rel_norm_mean=sum(rel_norm) / len(rel_norm),
                top1_agreement=agree / positions)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the parameters occupy: a quantized tensor counts its int data, scales and zero points."""
    total = 0
    for p in model.parameters():
        if is_quantized(p):
            names, _ = p.__tensor_flatten__()
            parts = [getattr(p, n) for n in names]
            total += sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))
        else:
            total += p.numel() * p.element_size()
    return total


def measure(model_dir: str, rows: torch.Tensor, modes: list[str], dtype: torch.dtype | None, device: str,
            batch_size: int) -> dict:
    results = {}
    reference = None
    for mode in [None, *modes]:
        start = time.perf_counter()
        model = HymbaForCausalLM.from_pretrained(model_dir, dtype=dtype, device=device, quantize=mode).eval()
        logits, nll, tokens = logits_and_nll(model, rows, batch_size)
        row = dict(loss=nll / tokens, perplexity=math.exp(nll / tokens), tokens=tokens,
                   weight_bytes=weight_bytes(model),
                   quantized_layers=sum(is_quantized(m.weight) for _, m in quantized_layers(model)),
                   decoder_linear_layers=len(quantized_layers(model)))
        if reference is None:
            reference = logits
        else:
            row.update(logit_errors(reference, logits))
            row["perplexity_change"] = row["perplexity"] / results["unquantized"]["perplexity"] - 1
        row["seconds"] = time.perf_counter() - start
        results[mode or "unquantized"] = row
    return results


def table(results: dict) -> str:
    # Δppl: perplexity change; MB: parameters as stored; max|Δ|, rel max (worst row), rel norm (mean
    # row), top-1: against the unquantized logits; q layers: decoder linear layers quantized
    lines = [f"{'weights':<12} {'loss':>7} {'ppl':>8} {'Δppl':>7} {'MB':>7} {'max|Δ|':>8} {'rel max':>8} "
             f"{'rel norm':>9} {'top-1':>7} {'q layers':>9}"]
    for name, r in results.items():
        errs = ("", "", "", "", "") if name == "unquantized" else (
            f"{r['perplexity_change']:+.2%}", f"{r['max_abs']:.3f}", f"{r['rel_max_worst']:.2%}",
            f"{r['rel_norm_mean']:.2%}", f"{r['top1_agreement']:.2%}")
        lines.append(f"{name:<12} {r['loss']:>7.4f} {r['perplexity']:>8.3f} {errs[0]:>7} {r['weight_bytes'] / 1e6:>7.2f} "
                     f"{errs[1]:>8} {errs[2]:>8} {errs[3]:>9} {errs[4]:>7} "
                     f"{r['quantized_layers']:>4}/{r['decoder_linear_layers']:<4}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a `hymba train` run folder")
    parser.add_argument("--modes", nargs="+", choices=QUANT_MODES, default=list(QUANT_MODES))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="weights before quantizing (default: the checkpoint's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-rows", type=int, default=None, help="score only the first N held-out rows")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    model_dir = run_model_dir(args.run)
    rows, data = held_out_rows(args.run, model_dir, args.max_rows)
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    results = measure(model_dir, rows, args.modes, dtype, args.device, args.batch_size)
    print(f"model {model_dir}; held-out: {data['rows']} validation rows of {data['seq_len']} tokens")
    print(table(results))
    if args.json:
        info = dict(command=" ".join(sys.argv), model=model_dir, held_out=data, dtype=args.dtype,
                    device=args.device, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    machine=dict(platform=platform.platform(), processor=platform.processor(),
                                 cpus=os.cpu_count(), threads=torch.get_num_threads()),
                    torch=torch.__version__, torchao=_torchao_version())
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dict(info, results=results), fh, indent=2)


def _torchao_version() -> str | None:
    try:
        import torchao
    except ImportError:
        return None
    return torchao.__version__


if __name__ == "__main__":
    main()
