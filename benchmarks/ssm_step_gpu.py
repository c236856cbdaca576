"""The SSM branch's decode step on one GPU: two fused kernels against the stages one by one.

    python benchmarks/ssm_step_gpu.py [--rows 1 2 4 8] [--sweep] [--json out.json]

Hymba-1.5B's shapes (d_inner 3200, d_state 16, dt_rank 100, conv 4, inner norms), bf16 weights.
Each variant is timed inside a CUDA graph of calls cycling through enough layer copies to defeat
the L2, as in a real step: the stages (conv update, x_proj, Δ/B/C norms, dt_proj, state update:
one kernel each, as ``MambaBranch.step`` runs them beyond the fused op's rows) and the fused form at its
defaults, and with ``--sweep`` at other blocks of channels and warps. Outputs are checked against
each other.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import NamedTuple

import torch
from graph_timing import L2_DEFEAT_BYTES, graph_time

from hymba import ops
from hymba.ops.ssm_step.triton import FUSED_BLOCK_D, FUSED_WARPS, fused_mamba_step_triton

D, N, R, K = 3200, 16, 100, 4
CALLS = 64


class MambaStepWeights(NamedTuple):
    """The SSM branch's parameters in the order of ``ops.fused_mamba_step``'s arguments."""

    conv_weight: torch.Tensor
    conv_bias: torch.Tensor | None
    x_proj_weight: torch.Tensor
    norm_weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    eps: float
    dt_weight: torch.Tensor
    dt_bias: torch.Tensor
    A_log: torch.Tensor
    D: torch.Tensor


def mamba_decode_step_unfused(x, z, conv_state, ssm_state, w: MambaStepWeights) -> torch.Tensor:
    """The branch's decode step stage by stage through the ops, as ``MambaBranch.step`` runs it."""
    xc = ops.causal_conv1d_update(x, conv_state, w.conv_weight, w.conv_bias)
    dt, B, C = ops.rms_norm_parts(ops.linear(xc, w.x_proj_weight), (R, N, N), w.norm_weights, w.eps)
    return ops.ssm_decode_step(ssm_state, xc, ops.linear(dt, w.dt_weight), w.A_log, B, C, w.D, z, w.dt_bias)


def mamba_decode_step_triton(x, z, conv_state, ssm_state, w: MambaStepWeights, block_d: int = FUSED_BLOCK_D,
                             num_warps: int = FUSED_WARPS) -> torch.Tensor:
    return fused_mamba_step_triton(x, z, conv_state, ssm_state, *w, block_d=block_d, num_warps=num_warps)


def layer(dev: str) -> MambaStepWeights:
    g = lambda *s: torch.randn(*s, device=dev)  # noqa: E731
    bf = torch.bfloat16
    return MambaStepWeights(
        (g(D, K) * 0.5).to(bf), (g(D) * 0.1).to(bf), (g(R + 2 * N, D) / D**0.5).to(bf),
        tuple((1 + 0.1 * g(m)).to(bf) for m in (R, N, N)), 1e-6, (g(D, R) / R**0.5).to(bf), (g(D) * 0.5 - 1).to(bf),
        g(D, N) * 0.5, g(D),
    )


def measure(rows: int, layers: list[MambaStepWeights], calls: int, knobs: list[tuple[int, int]]) -> dict:
    """Graph-timed µs per call of the stages and of the fused form at each (block_d, warps)."""
    proj = torch.randn(rows, 3 * D, device="cuda").bfloat16()
    x, z = proj[:, :D], proj[:, 2 * D:]
    conv = torch.randn(rows, D, K, device="cuda").bfloat16()
    ssm = torch.randn(rows, D, N, device="cuda")
    copies = len(layers)
    with torch.no_grad():
        stages = graph_time(lambda i: mamba_decode_step_unfused(x, z, conv, ssm, layers[i % copies]), calls)
        fused = {f"{bd}/{w}": 1e6 * graph_time(
            lambda i, bd=bd, w=w: mamba_decode_step_triton(x, z, conv, ssm, layers[i % copies], bd, w), calls)
            for bd, w in knobs}
        c1, s1, c2, s2 = conv.clone(), ssm.clone(), conv.clone(), ssm.clone()
        diff = (mamba_decode_step_unfused(x, z, c1, s1, layers[0]).float()
                - mamba_decode_step_triton(x, z, c2, s2, layers[0]).float()).abs().max().item()
    return dict(rows=rows, stages_us=stages * 1e6, fused_us=fused, max_diff=diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--sweep", action="store_true", help="also time other blocks of channels and warps")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    per_layer = sum(t.numel() * t.element_size() for t in layer("cuda") if isinstance(t, torch.Tensor))
    copies = max(1, int(L2_DEFEAT_BYTES // per_layer))
    layers = [layer("cuda") for _ in range(copies)]
    calls = max(CALLS, copies)
    knobs = [(FUSED_BLOCK_D, FUSED_WARPS)]
    if args.sweep:
        knobs += [k for k in itertools.product((32, 64, 128), (2, 4, 8)) if k != knobs[0]]
    results = []
    print(f"{'rows':>5}{'stages us':>11}" + "".join(f"{f'fused {bd}/{w} us':>17}" for bd, w in knobs) + "  max diff")
    for rows in args.rows:
        row = measure(rows, layers, calls, knobs)
        results.append(row)
        print(f"{rows:>5}{row['stages_us']:>11.1f}" + "".join(f"{t:>17.1f}" for t in row["fused_us"].values())
              + f"  {row['max_diff']:.1e}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(shape=dict(d_inner=D, d_state=N, dt_rank=R, d_conv=K), results=results),
                                        indent=1))


if __name__ == "__main__":
    main()
