"""GPU time of the prefill causal conv: the Triton kernel against the PyTorch reference.

    python benchmarks/conv_gpu.py [--json out.json]

Shapes of Hymba-1.5B's SSM branch (3,200 channels, kernel 4, bf16) for an 8K prompt with its
128 meta tokens, the input a column slice of the fused projection as in the model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from graph_timing import stream_time

from hymba.ops.conv import causal_conv1d_reference
from hymba.ops.conv_triton import causal_conv1d_triton


def cuda_us(fn, calls: int = 20) -> float:
    return stream_time(fn, calls, runs=1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for batch, length in ((1, 8320), (4, 4224)):
        fused = torch.randn(batch, length, 8960, device="cuda", dtype=torch.bfloat16)
        x = fused[..., 2560:5760]  # the SSM input columns of the fused in_proj output
        w = torch.randn(3200, 4, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(3200, device="cuda", dtype=torch.bfloat16)
        ref = cuda_us(lambda x=x, w=w, b=b: causal_conv1d_reference(x, w, b))
        tri = cuda_us(lambda x=x, w=w, b=b: causal_conv1d_triton(x, w, b))
        moved = 2 * x.numel() * x.element_size()  # read x, write y
        rows.append(dict(batch=batch, length=length, reference_us=ref, triton_us=tri,
                         triton_tb_s=moved / tri / 1e6))
        print(f"b={batch} L={length}: reference {ref:8.1f} us | triton {tri:8.1f} us "
              f"({moved / tri / 1e6:.2f} TB/s) | ×{ref / tri:.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
