"""Timing of GPU calls for the kernel benchmarks: inside a CUDA graph, or back to back.

This device's host launches small kernels slower than the GPU runs them, so timing eager calls
measures the host; a graph of many calls replayed at once measures the GPU. Calls that cannot be
captured (compiled code) or are long enough to hide their launch are timed back to back
(:func:`stream_time`). Callers cycle through
copies of their inputs totalling ``L2_DEFEAT_BYTES`` so that every call reads HBM, not the 60 MB
L2, as it would inside a model step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

L2_DEFEAT_BYTES = 400e6


def graph_time(fn: Callable[[int], object], calls: int, runs: int = 5) -> float:
    """Median seconds per call of ``fn(i)`` (i = 0..calls-1) over ``runs`` replays of one CUDA
    graph holding all the calls (after three eager warm-up calls on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    return sorted(times)[len(times) // 2]


def stream_time(fn: Callable[[], object], calls: int, runs: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``runs`` timings of ``calls`` back-to-back calls
    (after three warm-up calls), so that the host's dispatch overlaps the GPU's work."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    return sorted(times)[len(times) // 2]
