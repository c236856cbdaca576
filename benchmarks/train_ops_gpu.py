"""GPU time of one training layer's norms, SwiGLU gate, rotary and causal conv, forward + backward:
the Triton kernels (``HYMBA_TRITON=1``) against the PyTorch references (``HYMBA_TRITON=0``).

    python benchmarks/train_ops_gpu.py [--json out.json] [--rows 4224]

Shapes and dtypes of one Hymba-1.5B layer in a 4K training step under bf16 autocast (4,096
tokens + 128 meta tokens; float32 residual stream and weights, bf16 projections, under
autocast), the way the model calls them (``hymba.ops``). Times are per layer; the model has 32.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from graph_timing import graph_time

from hymba import ops

H, I, M, R, N = 1600, 3200, 5504, 100, 16  # hidden, inner, MLP, dt rank, state
HEADS, KV_HEADS, HEAD = 25, 5, 64


def cases(rows: int, dev: str = "cuda") -> dict[str, Callable[[], tuple[list[torch.Tensor], Callable]]]:
    """Each case makes its inputs (leaves that need gradients) and the call on them."""
    bf16, f32 = torch.bfloat16, torch.float32

    def leaf(*shape: int, dtype: torch.dtype = bf16, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=dev) * scale).to(dtype).requires_grad_(True)

    def weight(n: int) -> torch.Tensor:
        return (torch.rand(n, device=dev) + 0.5).requires_grad_(True)

    angles = torch.rand(1, 1, rows, HEAD // 2, device=dev) * 100
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    return {
        "input norm (f32 residual)": lambda: ([leaf(1, rows, H, dtype=f32), weight(H)],
                                             lambda x, w: ops.rms_norm(x, w, 1e-6)),
        "Δ/B/C part norms": lambda: ([leaf(1, rows, R + 2 * N), weight(R), weight(N), weight(N)],
                                     lambda x, *w: ops.rms_norm_parts(x, (R, N, N), w, 1e-6)),
        "mean of branch norms": lambda: ([leaf(1, rows, I), leaf(1, rows, I), weight(I), weight(I)],
                                         lambda a, b, wa, wb: ops.mean_of_rms_norms(a, b, wa, wb, 1e-6)),
        "add + pre-MLP norm": lambda: ([leaf(1, rows, H, dtype=f32), leaf(1, rows, H), weight(H)],
                                       lambda x, d, w: ops.add_rms_norm(x, d, w, 1e-6)),
        "SiLU(gate)·up": lambda: ([leaf(1, rows, M), leaf(1, rows, M)], ops.silu_mul),
        "causal conv": lambda: ([leaf(1, rows, I), leaf(I, 4, dtype=f32, scale=0.5), leaf(I, dtype=f32)],
                                lambda x, w, b: ops.causal_conv1d(x, w, b)[0]),
        "rotary q + k": lambda: ([leaf(1, rows, HEADS, HEAD), leaf(1, rows, KV_HEADS, HEAD)],
                                 lambda q, k: (ops.apply_rotary(q.transpose(1, 2), cos, sin, bf16),
                                               ops.apply_rotary(k.transpose(1, 2), cos, sin, bf16))),
    }


def training_step(make: Callable) -> Callable[[], None]:
    """Forward and backward of one case (upstream gradients of ones)."""
    inputs, call = make()

    def step():
        with torch.autocast(inputs[0].device.type, dtype=torch.bfloat16):
            out = call(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        for t in inputs:
            t.grad = None

    return step


def step_us(make: Callable, switch: str) -> float:
    """GPU time of one forward + backward, replayed in a CUDA graph: timed eagerly, 20 autograd
    calls back to back measured the host (0.3-2.6 ms a call for kernels of tens of µs)."""
    os.environ["HYMBA_TRITON"] = switch
    step = training_step(make)
    return graph_time(lambda i: step(), calls=20) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rows", type=int, default=4224, help="tokens per sequence (meta tokens included)")
    args = parser.parse_args()
    rows, total = [], {"reference": 0.0, "triton": 0.0}
    for name, make in cases(args.rows).items():
        ref, tri = step_us(make, "0"), step_us(make, "1")
        total["reference"] += ref
        total["triton"] += tri
        rows.append(dict(op=name, reference_us=ref, triton_us=tri))
        print(f"{name:28s} reference {ref:8.1f} us | triton {tri:8.1f} us | ×{ref / tri:.1f}", flush=True)
    print(f"{'one layer':28s} reference {total['reference']:8.1f} us | triton {total['triton']:8.1f} us")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, total=total), indent=2))


if __name__ == "__main__":
    main()
