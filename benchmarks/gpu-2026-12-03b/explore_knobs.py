"""One-off knob grid of 2026-12-03 (output: explore_knobs.txt), run from the repository root.

Decode attention at b=1 and b=128 (ring and global store) over 32/64/128-key blocks and 2-4
pipeline stages, and the GEMV at every accumulator tile size from 1,024 to 8,192, with the
timing of ``decode_attention_gpu.py`` and ``linear_gpu.py``.
"""

from __future__ import annotations

import itertools
import sys

sys.path.insert(0, "benchmarks")

import decode_attention_gpu as attention_bench  # noqa: E402
import linear_gpu as linear_bench  # noqa: E402
from graph_timing import L2_DEFEAT_BYTES, graph_time  # noqa: E402

import hymba.ops.linear_triton as linear_triton  # noqa: E402
from hymba.ops.decode_attention_triton import decode_attention_triton  # noqa: E402


def attention_grid() -> None:
    for b, (slots, ring) in itertools.product((1, 128), ((1025, True), (8208, False))):
        case, moved = attention_bench.make_case(b, slots, ring)
        copies = max(1, int(L2_DEFEAT_BYTES // moved))
        stores = [(case[3].clone(), case[4].clone()) for _ in range(copies)]
        for block_n, stages in itertools.product((32, 64, 128), (2, 3, 4)):
            knobs = dict(block_n=block_n, num_stages=stages, num_warps=4, waves=2)

            def call(i: int, knobs: dict = knobs, case: tuple = case, stores: list = stores) -> object:
                k, v = stores[i % len(stores)]
                return decode_attention_triton(case[0], case[1], case[2], k, v, case[5], **knobs)

            t = graph_time(call, max(20, copies))
            print(f"attn b={b} {'ring' if ring else 'global'} {knobs} {t * 1e6:.1f} us "
                  f"{moved / t / 1e12:.2f} TB/s", flush=True)


def gemv_tiles() -> None:
    for tile in (1024, 2048, 4096, 8192):
        linear_triton.TILE = tile
        for name, k, n, _ in linear_bench.SHAPES:
            r = linear_bench.measure(name, k, n, 1, [])
            print(f"gemv TILE {tile} {name:<24} cublas {r['cublas_us']:.1f} triton {r['triton_us']:.1f}", flush=True)


if __name__ == "__main__":
    attention_grid()
    gemv_tiles()
