"""Where the 8K prefill's host time goes: CPU-side profile (self CPU time by op, launch counts), and
the host time of each part of one layer called alone."""
import sys, time
sys.path.insert(0, "benchmarks")
import torch
import throughput as tp
from torch.profiler import profile, ProfilerActivity

model = tp.hymba_model()
ids = torch.randint(0, model.config.vocab_size, (1, tp.PROMPT), device="cuda")
with torch.no_grad():
    for _ in range(3):
        model(ids, logits_to_keep=1)
    torch.cuda.synchronize()
    host = tp.host_time(lambda: model(ids, logits_to_keep=1))
    wall = tp.cuda_time(lambda: model(ids, logits_to_keep=1))
    print(f"host {host*1e3:.1f} ms, wall {wall*1e3:.1f} ms", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model(ids, logits_to_keep=1)
        torch.cuda.synchronize()
ka = prof.key_averages()
print(ka.table(sort_by="self_cpu_time_total", row_limit=45, max_name_column_width=70))
launch = [e for e in ka if "LaunchKernel" in e.key or "cuLaunch" in e.key or "LaunchKernelEx" in e.key]
for e in launch:
    print(f"{e.key}: {e.count} calls, {e.self_cpu_time_total/1e3:.1f} ms self")
# GPU kernels by count
kern = sorted([e for e in ka if e.device_time_total > 0 and e.self_device_time_total > 0], key=lambda e: -e.count)[:40]
print("kernels by count:")
for e in kern:
    print(f"  {e.count:5d} {e.self_device_time_total/1e3:8.2f} ms  {e.key[:90]}")
# host gaps: the timeline of GPU idle
evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
evs.sort(key=lambda e: e.time_range.start)
gaps, last = [], None
for e in evs:
    if last is not None and e.time_range.start > last:
        gaps.append((e.time_range.start - last, e.name))
    last = max(last or 0, e.time_range.end)
gaps.sort(reverse=True)
print(f"GPU idle between kernels: {sum(g for g, _ in gaps)/1e3:.1f} ms over {len(gaps)} gaps; largest:")
for g, n in gaps[:15]:
    print(f"  {g/1e3:.3f} ms before {n[:80]}")
