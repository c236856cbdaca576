"""Every kernel of one Hymba-1.5B training step (b=1 x 4K, no checkpointing, bf16 autocast), grouped."""
import collections, json, re, sys
sys.path.insert(0, "benchmarks")
import torch
from hymba import HymbaConfig, HymbaForCausalLM
batch = int(sys.argv[1]) if len(sys.argv) > 1 else 1
with torch.device("cuda"):
    model = HymbaForCausalLM(HymbaConfig.from_preset("hymba-1.5b"))
model.train(); model.gradient_checkpointing_enable(False)
ids = torch.randint(0, model.config.vocab_size, (batch, 4096), device="cuda")
def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=False)
for _ in range(3):
    step()
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    step(); torch.cuda.synchronize()
prof.export_chrome_trace("/tmp/train_trace.json")
ev = [e for e in json.load(open("/tmp/train_trace.json"))["traceEvents"] if e.get("cat") == "kernel"]
rules = [("scan_bwd", r"_scan_bwd"), ("scan_fwd", r"_scan_fwd"), ("flex_bwd", r"flex_attention_backward"),
         ("flex_fwd", r"flex_attention"), ("matmul", r"nvjet|gemm|cutlass|sm90_xmma|cublas"),
         ("triton_ours", r"^_"), ("inductor", r"triton_"), ("copy/cast", r"copy|_to_copy|bfloat16_copy"),
         ("reduce", r"reduce"), ("elementwise", r"elementwise"), ("other", r".")]
groups = collections.defaultdict(lambda: [0.0, 0]); names = collections.defaultdict(lambda: [0.0, 0])
for e in ev:
    n = e["name"]
    for g, pat in rules:
        if re.search(pat, n):
            break
    if g.startswith("scan"):
        grid = e["args"].get("grid", [0, 0, 0])
        g += f" grid={grid}"
    groups[g][0] += e["dur"]; groups[g][1] += 1
    names[n[:90]][0] += e["dur"]; names[n[:90]][1] += 1
total = sum(e["dur"] for e in ev)
print(f"batch {batch}: {len(ev)} kernels, {total/1e3:.1f} ms")
for g, (t, c) in sorted(groups.items(), key=lambda x: -x[1][0]):
    print(f"  {t/1e3:8.2f} ms {c:5d}  {g}")
print("top kernels:")
for n, (t, c) in sorted(names.items(), key=lambda x: -x[1][0])[:45]:
    print(f"  {t/1e3:8.2f} ms {c:5d}  {n}")
for pat in ("flex_attention_backward", "flex_attention"):
    ds = [round(e["dur"]) for e in sorted(ev, key=lambda e: e["ts"]) if pat in e["name"] and (pat != "flex_attention" or "backward" not in e["name"])]
    print(pat, "us per call in order:", ds)
