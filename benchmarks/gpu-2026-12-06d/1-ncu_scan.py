"""One scan forward + backward at Hymba-1.5B's training shape (b=1, 4224 steps), for ncu."""
import sys
sys.path.insert(0, "benchmarks")
import torch
from scan_gpu import inputs
from hymba.ops.scan.triton import selective_scan_triton
args = inputs(1, 4224, grad=True)
dy = torch.randn_like(args["u"])
for _ in range(3):
    y, _ = selective_scan_triton(**args)
    y.backward(dy)
torch.cuda.synchronize()
print("done")
