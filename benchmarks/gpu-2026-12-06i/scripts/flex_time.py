"""FlexAttention forward + backward of one layer, old (b,H,L,d) out of the compiled region) against
new (b,L,H,d) out): GPU kernel time per step (profiler sum) and stream time, in A B A B order."""
import sys
sys.path.insert(0, "src")
import torch
from torch.nn.attention.flex_attention import flex_attention
from hymba.ops import flex as fx
b, L, H, Hkv, d, dv = int(sys.argv[1]) if len(sys.argv) > 1 else 1, 4224, 25, 5, 64, 128
dev = "cuda"
xq = torch.randn(b, L, H, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(b, Hkv, L, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(b, Hkv, L, dv, device=dev, dtype=torch.bfloat16, requires_grad=True)
g = torch.randn(b, L, H * dv, device=dev, dtype=torch.bfloat16)
mask = fx._block_mask(L, L, 1024, 128, 0, str(xq.device))
opts = fx.kernel_options(xq.transpose(1, 2), v)
compiled_old = torch.compile(flex_attention, dynamic=False)
def old(q):
    return compiled_old(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=opts)
def new(q):
    return fx.flex_attention_swa(q, k, v, 1024, 128)
def step(fn):
    out = fn(xq.transpose(1, 2))
    out.transpose(1, 2).reshape(b, L, H * dv).backward(g)
    for t in (xq, k, v):
        t.grad = None
for fn in (old, new):
    for _ in range(3):
        step(fn)
torch.cuda.synchronize()
for rnd in range(2):
    for name, fn in (("old", old), ("new", new)):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                step(fn)
            torch.cuda.synchronize()
        kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu = sum(e.self_device_time_total for e in kernels) / 10 / 1e3
        s, e_ = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(); s.record()
        for _ in range(50):
            step(fn)
        e_.record(); torch.cuda.synchronize()
        print(f"round {rnd} b={b} {name}: kernels {gpu:.3f} ms/step, stream {s.elapsed_time(e_) / 50:.3f} ms/step", flush=True)
        if rnd == 1:
            for ev in sorted(kernels, key=lambda e: -e.self_device_time_total)[:6]:
                print(f"    {ev.key[:70]:<70} {ev.count / 10:>4.0f}x {ev.self_device_time_total / 10:8.1f} us", flush=True)
