"""The linear layer's product through PyTorch (cuBLAS on CUDA), with what makes cuBLAS fast and
autocast exact here: zero-padded widths for misaligned products, float32 weight gradients under
autocast, the residual added in place."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..derived import derived
from .quantized import is_quantized


def torch_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` through PyTorch (cuBLAS on CUDA): on padded widths where they
    are misaligned, with float32 weight gradients under autocast. A torchao quantized weight
    goes straight to ``F.linear`` (torchao's dispatch)."""
    if is_quantized(weight):
        return F.linear(x, weight, bias)
    if _misaligned(x, weight):
        return _aligned_linear(x, weight, bias)
    if _float32_weight_grad(x, weight, bias):
        return _AutocastLinear.apply(x, weight, bias, torch.get_autocast_dtype("cuda"))
    return F.linear(x, weight, bias)


class _AutocastLinear(torch.autograd.Function):
    """``F.linear`` of float32 parameters under autocast, as autocast runs it (inputs cast to the
    autocast dtype), but with the parameters' gradients formed in float32 by the matrix product
    itself. Autocast forms them in its dtype and casts them: per weight a bf16 write and read
    and a float32 write more, and a rounding less here."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
        with torch.autocast("cuda", enabled=False):
            x16, w16 = x.to(dtype), weight.to(dtype)
            y = F.linear(x16, w16, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x16, w16)
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x16, w16 = ctx.saved_tensors
        dx = dw = db = None
        rows = dy.reshape(-1, dy.shape[-1])
        if ctx.needs_input_grad[0]:
            dx = (dy @ w16).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            dw = torch.mm(rows.t(), x16.reshape(-1, x16.shape[-1]), out_dtype=torch.float32)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = rows.sum(0, dtype=torch.float32)
        return dx, dw, db, None


# torch.mm(a, b, out_dtype=torch.float32) of bf16/fp16 inputs on CUDA (PyTorch 2.8 and later)
_MM_WRITES_FLOAT32 = torch.torch_version.TorchVersion(torch.__version__) >= (2, 8)


def _float32_weight_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether :class:`_AutocastLinear` runs this product: CUDA autocast to a 16-bit dtype, float32
    parameters that autograd records, and a PyTorch whose matrix product writes float32 from
    16-bit inputs."""
    if not (x.is_cuda and torch.is_autocast_enabled("cuda") and torch.is_grad_enabled()):
        return False
    if torch.get_autocast_dtype("cuda") not in (torch.bfloat16, torch.float16):
        return False
    params = [weight] if bias is None else [weight, bias]
    if any(p.dtype != torch.float32 for p in params) or not any(p.requires_grad for p in params):
        return False
    return x.dim() >= 2 and _MM_WRITES_FLOAT32


# cuBLAS's fast kernels read and write their matrices by 16-byte rows: a product whose
# input width or output width is not a multiple of 8 elements (Hymba's x_proj output of
# dt_rank + 2·d_state = 132 columns, dt_proj's input of dt_rank = 100) falls back to slower
# kernels. From this many rows on (prefill, training), such products run on zero-padded widths.
ALIGN_ROWS = 256
ALIGN = 8


def _misaligned(x: Tensor, weight: Tensor) -> bool:
    n, k = weight.shape
    return x.is_cuda and x.dim() >= 2 and (n % ALIGN or k % ALIGN) and x.numel() >= ALIGN_ROWS * k


def _aligned_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` computed on widths padded with zeros to multiples of
    ``ALIGN``: the result is a view of a wider output (its rows 16-byte aligned)."""
    n, k = weight.shape
    pad_n, pad_k = -n % ALIGN, -k % ALIGN
    if pad_k:
        x = F.pad(x, (0, pad_k))
    # the weight and bias padded once (and again only after they change), not at every call
    weight = derived(weight, f"padded {pad_k} {pad_n}", lambda w: F.pad(w, (0, pad_k, 0, pad_n)))
    if bias is not None and pad_n:
        bias = derived(bias, f"padded {pad_n}", lambda b: F.pad(b, (0, pad_n)))
    y = F.linear(x, weight, bias)
    return y[..., :n] if pad_n else y


def adds_in_place(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None) -> bool:
    """Whether ``residual += x Wᵀ`` can run as one in-place cuBLAS product: CUDA, no bias, one dtype,
    a contiguous residual of the output's shape, aligned widths, no autocast and no autograd."""
    if residual is None or bias is not None or not x.is_cuda or torch.is_autocast_enabled("cuda"):
        return False
    n, k = weight.shape
    if not (x.dtype == weight.dtype == residual.dtype and residual.is_contiguous()):
        return False
    if residual.shape != (*x.shape[:-1], n) or n % ALIGN or k % ALIGN:
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, residual)))
