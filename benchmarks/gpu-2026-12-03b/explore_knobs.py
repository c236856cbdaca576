import sys, itertools, torch
sys.path.insert(0, "benchmarks")  # run from the repository root
import decode_attention_gpu as D
import linear_gpu as LG
import hymba.ops.linear_triton as L
from hymba.ops.decode_attention_triton import decode_attention_triton
for b, (slots, ring) in itertools.product((1, 128), ((1025, True), (8208, False))):
    case, moved = D.make_case(b, slots, ring)
    copies = max(1, int(D.L2_DEFEAT_BYTES // moved))
    stores = [(case[3].clone(), case[4].clone()) for _ in range(copies)]
    for bn, st, w in itertools.product((32, 64, 128), (2, 3, 4), (4,)):
        kn = dict(block_n=bn, num_stages=st, num_warps=w, waves=2)
        try:
            t = D.graph_time(lambda i: decode_attention_triton(case[0], case[1], case[2], *stores[i % copies], case[5], **kn), max(20, copies))
            print(f"attn b={b} {'ring' if ring else 'global'} {kn} {t*1e6:.1f} us {moved/t/1e12:.2f} TB/s", flush=True)
        except Exception as e:
            print("attn fail", kn, str(e)[:100])
    del stores
for tile in (1024, 2048, 4096, 8192):
    L.TILE = tile
    for name, k, n, _ in LG.SHAPES:
        r = LG.measure(name, k, n, 1, [])
        print(f"gemv TILE {tile} {name:<24} cublas {r['cublas_us']:.1f} triton {r['triton_us']:.1f}", flush=True)
