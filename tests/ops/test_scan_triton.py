"""The Triton selective scan against the sequential reference: outputs, final state and every
gradient, for float32 and bfloat16 inputs, lengths that are and are not chunk multiples.

On a GPU; or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``), where the longer
sequences are skipped (the interpreter runs a program's steps one by one in Python)."""

from __future__ import annotations

import pytest
import torch

from hymba.ops.scan import resolve_impl, selective_scan, selective_scan_reference

pytestmark = pytest.mark.gpu
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The longest sequence a test runs under the interpreter (the file takes about 14 minutes there).
INTERPRETER_STEPS = 400


@pytest.fixture
def dev(triton_device: str) -> str:
    """The kernels' device; on CPU (the interpreter), skipped where it cannot run them: Triton
    3.6's interpreter turns a program id used as a loop bound into an int, which NumPy >= 2.3
    refuses for its one-element arrays."""
    if triton_device == "cpu":
        import numpy as np

        try:
            int(np.array([1]))
        except TypeError:
            pytest.skip("Triton's interpreter needs NumPy < 2.3 for the scan kernels")
    return triton_device


def fits(dev: str, length: int) -> None:
    if dev == "cpu" and length > INTERPRETER_STEPS:
        pytest.skip(f"{length} steps: too long for Triton's interpreter")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def random_inputs(b, L, d, n, dtype, seed, device):
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    args = dict(
        u=r(b, L, d), delta=r(b, L, d) - 1.0, A=-torch.exp(r(d, n) * 0.5 + 0.5), B=r(b, L, n),
        C=r(b, L, n), D=r(d), z=r(b, L, d), delta_bias=r(d) * 0.5 - 1.0, initial_state=r(b, d, n),
    )
    low = ("u", "delta", "B", "C", "z")  # activations in the model's dtype; parameters stay float32
    return {k: (v.to(dtype) if k in low else v) for k, v in args.items()}


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def run(fn, args, dy, ds):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in args.items()}
    y, s = fn(**leaves)
    torch.autograd.backward([y, s], [dy.to(y.dtype), ds.to(s.dtype)])
    return y, s, {k: v.grad for k, v in leaves.items()}


def assert_float32_matches_reference(fn, shape, seed, device):
    """``fn``'s output, final state and every gradient on float32 inputs of ``shape`` (b, L, d,
    n) against the float64 reference."""
    b, L, d, n = shape
    args = random_inputs(b, L, d, n, torch.float32, seed=seed, device=device)
    dy = torch.randn(b, L, d, device=device, dtype=torch.float64)
    ds = torch.randn_like(args["initial_state"], dtype=torch.float64)
    y_ref, s_ref, g_ref = run(selective_scan_reference, {k: v.double() for k, v in args.items()}, dy, ds)
    y, s, g = run(fn, args, dy, ds)
    assert rel_err(y, y_ref) < 2e-5 and rel_err(s, s_ref) < 2e-5
    for name in NAMES:
        assert rel_err(g[name], g_ref[name]) < 2e-5, name


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (2, 37, 40, 16), (1, 256, 64, 16), (3, 1000, 24, 16), (2, 50, 9, 5)])
def test_matches_reference(dtype, tol, shape, dev):
    b, L, d, _ = shape
    fits(dev, L)
    args = random_inputs(*shape, dtype, seed=sum(shape), device=dev)
    dy = torch.randn(b, L, d, device=dev, dtype=torch.float64)
    ds = torch.randn_like(args["initial_state"], dtype=torch.float64)
    ref64 = {k: v.double() for k, v in args.items()}
    y_ref, s_ref, g_ref = run(selective_scan_reference, ref64, dy, ds)
    y, s, g = run(lambda **a: selective_scan(**a, impl="triton"), args, dy, ds)
    assert y.dtype == dtype and s.dtype == torch.float32
    assert torch.isfinite(y).all()
    # bfloat16 outputs carry one rounding of the result; the float32 state does not
    assert rel_err(y, y_ref) < tol
    assert rel_err(s, s_ref) < (2e-5 if dtype == torch.float32 else 5e-3)
    for name in NAMES:
        assert g[name].dtype == args[name].dtype, name
        assert rel_err(g[name], g_ref[name]) < tol, name


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", [(1, 70, 40, 16), (3, 333, 24, 16), (1, 2000, 48, 16)])
def test_inference_matches_reference(dtype, tol, shape, dev):
    """Without gradients the forward saves no states and writes its output in other chunks."""
    fits(dev, shape[1])
    args = random_inputs(*shape, dtype, seed=7, device=dev)
    with torch.no_grad():
        y, s = selective_scan(**args, impl="triton")
        y_ref, s_ref = selective_scan_reference(**{k: v.double() for k, v in args.items()})
    assert rel_err(y, y_ref) < tol and rel_err(s, s_ref) < (2e-5 if dtype == torch.float32 else 5e-3)


@pytest.mark.parametrize("block_d, warps, segments", [(16, 1, 1), (32, 1, 3), (64, 2, 7), (128, 4, 2), (32, 1, 40)])
def test_forward_launches_and_time_segments(block_d, warps, segments, dev):
    """Any channel block, warp count and number of time segments (the sequence split across
    programs, then stitched) gives the reference's output, final state and gradients."""
    from hymba.ops.scan.triton import selective_scan_triton

    assert_float32_matches_reference(
        lambda **a: selective_scan_triton(**a, block_d=block_d, num_warps=warps, segments=segments),
        (2, 300, 72, 16), seed=segments, device=dev,
    )


@pytest.mark.parametrize(
    "bwd_block_d, bwd_warps, fwd_programs, bwd_programs",
    [(16, 1, 8, 20), (8, 1, 4, 4), (64, 1, 30, 1), (16, 2, 8, 20), (32, 4, 6, 6), (16, 1, 8, None)],
)
def test_backward_launches_its_own_blocks_and_segments(
    monkeypatch, bwd_block_d, bwd_warps, fwd_programs, bwd_programs, dev
):
    """By default the backward picks its own channel block, warps and time segments, unlike the
    forward's (None: by whole waves of programs); the gradients match the reference either way."""
    from hymba.ops.scan import triton as scan_triton

    monkeypatch.setattr(scan_triton, "MIN_SEGMENT", 16)
    monkeypatch.setattr(scan_triton, "TARGET_PROGRAMS", fwd_programs)
    monkeypatch.setattr(scan_triton, "BWD_TARGET_PROGRAMS", bwd_programs)
    monkeypatch.setattr(scan_triton, "BWD_BLOCK_D", bwd_block_d)
    monkeypatch.setattr(scan_triton, "BWD_WARPS", bwd_warps)
    assert_float32_matches_reference(scan_triton.selective_scan_triton, (1, 400, 72, 16), seed=bwd_block_d,
                                     device=dev)


@cuda_only
@pytest.mark.parametrize("n", [2, 3, 8, 16])
def test_channel_sums_by_shuffles(monkeypatch, n):
    """The backward's dB/dC sums over a warp's channels by warp shuffles (a GPU-only path: inline
    PTX) match the reference and ``tl.sum``'s, for state sizes 2-16 (padded to 2, 4, 8, 16)."""
    from hymba.ops.scan import triton as scan_triton

    assert_float32_matches_reference(scan_triton.selective_scan_triton, (2, 300, 40, n), seed=n, device="cuda")
    args = random_inputs(2, 300, 40, n, torch.float32, seed=n + 1, device="cuda")
    dy = torch.randn(2, 300, 40, device="cuda")
    ds = torch.randn_like(args["initial_state"])
    grads = []
    for scatter in (True, False):
        monkeypatch.setattr(scan_triton, "BWD_SCATTER", scatter)
        grads.append(run(scan_triton.selective_scan_triton, args, dy, ds)[2])
    for name in ("B", "C"):
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefetch", [2, 3])
def test_saving_forward_prefetch(monkeypatch, prefetch, dev):
    """The forward that saves states for the backward may prefetch its own number of steps."""
    from hymba.ops.scan import triton as scan_triton

    monkeypatch.setattr(scan_triton, "FWD_SAVE_PREFETCH", prefetch)
    assert_float32_matches_reference(scan_triton.selective_scan_triton, (1, 150, 40, 16), seed=prefetch, device=dev)


@cuda_only
def test_inference_saves_no_states_for_parameters_that_require_grad():
    """Under no_grad (inference with a trainable model's parameters) the forward must not save
    the chunk states for a backward: they cost it a third of its time. With autograd on it must."""
    from hymba.ops.scan import triton as scan_triton

    b, L, d, n = 1, 4096, 64, 16
    args = random_inputs(b, L, d, n, torch.bfloat16, seed=5, device="cuda")
    args["D"].requires_grad_(True)
    args["delta_bias"].requires_grad_(True)
    states = b * (L // scan_triton.CHUNK) * n * d * 4  # float32, one state every CHUNK steps

    def peak(grad: bool) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.set_grad_enabled(grad):
            scan_triton.selective_scan_triton(**args)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    assert peak(grad=False) < states  # y and the (B, C) rows: about half of ``states``
    assert peak(grad=True) >= states


def test_optional_arguments_and_strided_inputs(dev):
    """No D / z / bias / initial state / softplus; inputs as the model passes them (views)."""
    b, L, d, n = 2, 70, 32, 16
    full = torch.randn(b, d, L, device=dev)
    u = full.transpose(1, 2)  # (b, L, d) with channel stride L
    proj = torch.randn(b, L, 4 + 2 * n, device=dev)
    B, C = proj[..., 4 : 4 + n], proj[..., 4 + n :]
    from hymba.ops.scan.triton import _adjacent_pair

    assert _adjacent_pair(B, C) is not None and _adjacent_pair(C, B) is None  # B, C read by one copy
    delta = torch.rand(b, L, d, device=dev) * 0.5
    A = -torch.rand(d, n, device=dev) - 0.1
    y, s = selective_scan(u, delta, A, B, C, delta_softplus=False, impl="triton")
    y_ref, s_ref = selective_scan_reference(u.double(), delta.double(), A.double(), B.double(), C.double(),
                                            delta_softplus=False)
    assert rel_err(y, y_ref) < 2e-5 and rel_err(s, s_ref) < 2e-5


def test_padding_delta_keeps_the_state(dev):
    """Δ_raw = -1e4 (the model's padding) must leave the state exactly unchanged."""
    args = random_inputs(1, 40, 16, 16, torch.float32, seed=3, device=dev)
    args["delta"][:, 20:] = -1e4
    _, s_full = selective_scan(**args, impl="triton")
    head = {k: (v[:, :20] if k in ("u", "delta", "B", "C", "z") else v) for k, v in args.items()}
    _, s_head = selective_scan(**head, impl="triton")
    torch.testing.assert_close(s_full, s_head, rtol=0, atol=0)


@cuda_only
def test_cuda_dispatches_to_triton(monkeypatch):
    monkeypatch.delenv("HYMBA_SCAN_IMPL", raising=False)
    assert resolve_impl("cuda") == "triton"
    assert resolve_impl("cpu") == "chunked"


def test_segments_fill_the_gpu_at_small_batch():
    pytest.importorskip("triton", reason="the Triton scan needs Triton")
    from hymba.ops.scan.triton import segments_for

    count, seg_len = segments_for(batch=1, blocks=100, length=8192, chunk=16, target=1024)
    assert count == 10 and seg_len % 16 == 0 and count * seg_len >= 8192 > (count - 1) * seg_len
    assert segments_for(batch=1, blocks=100, length=8192, chunk=16, target=2048)[0] == 20
    assert segments_for(batch=64, blocks=100, length=8192, chunk=16, target=1024) == (1, 8192)
    assert segments_for(batch=1, blocks=100, length=300, chunk=16)[0] == 1  # too short to split


def test_backward_segments_fill_whole_waves():
    """The backward's time segments: as many programs as whole waves take, no wave nearly empty."""
    pytest.importorskip("triton", reason="the Triton scan needs Triton")
    from hymba.ops.scan.triton import backward_segments

    for batch, length in [(1, 4224), (2, 4224), (3, 5000), (8, 4224), (1, 100_000)]:
        count, seg_len = backward_segments(batch, 200, length, 4, 1584, 256)
        assert seg_len % 4 == 0 and count * seg_len >= length > (count - 1) * seg_len
        assert count <= max(1, length // 256) and (batch * 200 * count <= 4 * 1584 or count == 1)
    # 15 segments at b=1 and b=2 run 3,000 and 6,000 programs: 2 and 4 waves with a full last one;
    # 16 would leave 32 and 64 programs in a last wave
    assert backward_segments(1, 200, 4224, 4, 1584, 256) == (15, 284)
    assert backward_segments(2, 200, 4224, 4, 1584, 256) == (15, 284)
    assert backward_segments(1, 200, 300, 4, 1584, 256)[0] == 1  # too short to split
    assert backward_segments(1, 200, 300, 4, 1584, 16)[0] > 1


def test_gradients_with_the_models_strides_and_no_states(dev):
    """As the model trains: u a transposed view, z and B/C column slices of wider projections, no
    initial state and the final state unused; every gradient matches the reference."""
    b, L, d, n = 2, 301, 72, 16
    g = torch.Generator(device=dev).manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, device=dev)  # noqa: E731
    leaves = dict(
        u=r(b, d, L), delta=r(b, L, d) - 1.0, A=-torch.exp(r(d, n) * 0.5 + 0.5), proj=r(b, L, 4 + 2 * n),
        D=r(d), zfull=r(b, L, 2 * d), delta_bias=r(d) * 0.5 - 1.0,
    )
    dy = torch.randn(b, L, d, device=dev, dtype=torch.float64)
    grads = []
    for fn, dtype in ((selective_scan_reference, torch.float64), (lambda **a: selective_scan(**a, impl="triton"), None)):
        x = {k: v.detach().to(dtype or v.dtype).requires_grad_(True) for k, v in leaves.items()}
        y, _ = fn(u=x["u"].transpose(1, 2), delta=x["delta"], A=x["A"], B=x["proj"][..., 4 : 4 + n],
                  C=x["proj"][..., 4 + n :], D=x["D"], z=x["zfull"][..., d:], delta_bias=x["delta_bias"])
        y.backward(dy.to(y.dtype))
        grads.append({k: v.grad for k, v in x.items()})
    for name in leaves:
        assert rel_err(grads[1][name], grads[0][name]) < 2e-5, name
