"""CPU selective scan: the vectorised chunked implementation against the sequential reference.

    python benchmarks/scan_cpu.py [--threads 2] [--length 2048] [--json out.json]

Shapes are those of the presets' SSM branch (batch 1): channels = d_inner, state = d_state.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from hymba import HymbaConfig
from hymba.ops.scan import selective_scan_chunked, selective_scan_reference


def inputs(length: int, channels: int, state: int, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(batch, length, channels), delta=r(batch, length, channels) - 2.0,
        A=-torch.exp(torch.log(torch.arange(1, state + 1.0)).repeat(channels, 1)),
        B=r(batch, length, state), C=r(batch, length, state), D=torch.ones(channels),
        z=r(batch, length, channels), delta_bias=torch.full((channels,), -1.0),
    )


def median_time(fn, x: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(**x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--presets", nargs="+", default=["tiny", "hymba-125m", "hymba-350m", "hymba-1.5b"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with torch.inference_mode():
        for name in args.presets:
            cfg = HymbaConfig.from_preset(name)
            x = inputs(args.length, cfg.d_inner, cfg.mamba_d_state)
            y_ref, _ = selective_scan_reference(**x)
            y, _ = selective_scan_chunked(**x)
            err = float((y - y_ref).abs().max())
            t_ref = median_time(selective_scan_reference, x, args.repeats)
            t_chk = median_time(selective_scan_chunked, x, args.repeats)
            rows.append(dict(preset=name, channels=cfg.d_inner, state=cfg.mamba_d_state,
                             length=args.length, reference_s=t_ref, chunked_s=t_chk,
                             speedup=t_ref / t_chk, max_abs_diff=err))
    print(f"selective scan, batch 1, length {args.length}, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'preset':<12}{'channels':>9}{'reference ms':>14}{'chunked ms':>12}{'speed-up':>10}{'max |diff|':>12}")
    for r in rows:
        print(f"{r['preset']:<12}{r['channels']:>9}{r['reference_s'] * 1e3:>14.1f}"
              f"{r['chunked_s'] * 1e3:>12.1f}{r['speedup']:>9.1f}x{r['max_abs_diff']:>12.1e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(threads=args.threads, torch=torch.__version__, rows=rows), fh, indent=2)


if __name__ == "__main__":
    main()
