"""GPU time of the causal conv: the Triton kernels against the PyTorch reference.

    python benchmarks/conv_gpu.py [--json out.json] [--bwd-sweep]

Shapes of Hymba-1.5B's SSM branch (3,200 channels, kernel 4, bf16) for an 8K prompt with its
128 meta tokens (prefill) and a 4K training row, the input a column slice of the fused
projection as in the model. Training rows time the forward and backward together;
``--bwd-sweep`` times them for each backward tile in BWD_SWEEP.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from graph_timing import graph_time, stream_time

from hymba.ops.conv import triton as conv_triton
from hymba.ops.conv.reference import causal_conv1d_reference
from hymba.ops.conv.triton import causal_conv1d_train, causal_conv1d_triton

# backward launches timed by --bwd-sweep: (time steps, channels, warps, programs of the first pass)
BWD_SWEEP = [(16, 128, 16, 1024), (8, 128, 4, 1024), (8, 128, 2, 1024), (4, 128, 4, 1024), (4, 128, 2, 1024),
             (8, 64, 2, 1024), (8, 64, 4, 1024), (16, 128, 4, 1024), (8, 256, 4, 1024), (8, 128, 4, 512),
             (8, 128, 4, 2048), (4, 128, 2, 2048)]


def cuda_us(fn, calls: int = 20) -> float:
    return stream_time(fn, calls, runs=1) * 1e6


def ssm_input(batch: int, length: int) -> tuple[torch.Tensor, ...]:
    fused = torch.randn(batch, length, 8960, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3200, 4, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(3200, device="cuda", dtype=torch.bfloat16)
    return fused[..., 2560:5760], w, b  # the SSM input columns of the fused in_proj output


def training_us(conv, batch: int, length: int) -> float:
    """Forward and backward of ``conv`` on a training row (its input still a column slice, the
    slice's own backward left out), replayed as a CUDA graph: timed back to back, the backward's
    host work outlasts its kernels on a slow host, and every tile looks alike."""
    x, w, b = (t.detach().requires_grad_() for t in ssm_input(batch, length))
    dy = torch.randn_like(x)

    def step(i: int = 0) -> None:
        y = conv(x, w, b)
        torch.autograd.grad(y[0] if isinstance(y, tuple) else y, (x, w, b), dy)
    return graph_time(step, 10) * 1e6


def bwd_sweep(batch: int = 1, length: int = 4224) -> list[dict]:
    names = ("BWD_BLOCK_T", "BWD_BLOCK_C", "BWD_WARPS", "GRAD_PROGRAMS")
    defaults = [getattr(conv_triton, name) for name in names]
    rows = []
    for setting in BWD_SWEEP:
        for name, value in zip(names, setting):
            setattr(conv_triton, name, value)
        bt, bc, warps, programs = setting
        us = training_us(causal_conv1d_train, batch, length)
        rows.append(dict(batch=batch, length=length, block_t=bt, block_c=bc, warps=warps, grad_programs=programs,
                         fwd_bwd_us=us))
        print(f"b={batch} L={length} fwd+bwd, backward tile {bt} x {bc} on {warps} warps, {programs} programs: "
              f"{us:8.1f} us", flush=True)
    for name, value in zip(names, defaults):
        setattr(conv_triton, name, value)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--bwd-sweep", action="store_true", help="time each backward tile in BWD_SWEEP")
    args = parser.parse_args()
    if args.bwd_sweep:
        rows = bwd_sweep()
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return
    rows = []
    for batch, length in ((1, 8320), (4, 4224)):
        x, w, b = ssm_input(batch, length)
        ref = cuda_us(lambda x=x, w=w, b=b: causal_conv1d_reference(x, w, b))
        tri = cuda_us(lambda x=x, w=w, b=b: causal_conv1d_triton(x, w, b))
        moved = 2 * x.numel() * x.element_size()  # read x, write y
        rows.append(dict(batch=batch, length=length, reference_us=ref, triton_us=tri,
                         triton_tb_s=moved / tri / 1e6))
        print(f"b={batch} L={length}: reference {ref:8.1f} us | triton {tri:8.1f} us "
              f"({moved / tri / 1e6:.2f} TB/s) | ×{ref / tri:.1f}", flush=True)
    batch, length = 1, 4224
    ref = training_us(causal_conv1d_reference, batch, length)
    tri = training_us(causal_conv1d_train, batch, length)
    rows.append(dict(batch=batch, length=length, training=True, reference_us=ref, triton_us=tri))
    print(f"b={batch} L={length} fwd+bwd: reference {ref:8.1f} us | triton {tri:8.1f} us | ×{ref / tri:.1f}",
          flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
