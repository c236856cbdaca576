"""Graphed training steps without checkpointing, b=1 and b=2, MFU against the measured rate."""
import sys
sys.path.insert(0, "benchmarks")
import torch
import throughput as tp
rate = tp.matmul_rate()
for b in [int(a) for a in sys.argv[1:]] or (1, 2):
    r, _, _ = tp.hymba_training(rate, b, False, True)
    print(f"b={b} graphed no ckpt: {r['train_s'] * 1e3:.0f} ms, {r['train_tok_s']:,.0f} tok/s, MFU {r['train_mfu']:.1%} at {rate / 1e12:.0f} TFLOP/s", flush=True)
    torch.cuda.empty_cache()
