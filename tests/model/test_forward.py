"""Forward-pass behaviour on random models of every layer kind: padding, masks, variants, errors."""

from __future__ import annotations

import pytest
import torch

from hymba import HymbaConfig, HymbaForCausalLM, InputError

SMALL = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=5, num_attention_heads=4,
    num_key_value_heads=2, sliding_window=6, global_attn_idx=[0, 4], kv_reuse_group=[[1, 2, 3]],
    num_memory_tokens=4, torch_dtype="float32",
)
VARIANTS = {
    "hybrid": {},
    "attention-only": dict(mixer_type="attention"),
    "ssm-only": dict(mixer_type="ssm", kv_reuse_group=[], global_attn_idx=[]),
    "no-meta": dict(num_memory_tokens=0),
    "all-swa": dict(global_attn_idx=[]),
    "all-global": dict(sliding_window=None, kv_reuse_group=[]),
    "no-kv-sharing": dict(kv_reuse_group=[]),
    "relu2-mlp": dict(mlp_hidden_act="relu2"),
}


def make_model(**changes) -> HymbaForCausalLM:
    torch.manual_seed(0)
    model = HymbaForCausalLM(HymbaConfig(**{**SMALL, **changes})).double().eval()
    with torch.no_grad():  # larger weights than the init so that every part matters
        for name, p in model.named_parameters():
            if "A_log" not in name and not name.endswith(".D"):
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_left_padding_gives_each_row_its_own_logits(variant):
    model = make_model(**VARIANTS[variant])
    lengths = [3, 6, 11, 20]  # shorter than, equal to and longer than window + meta
    n = max(lengths)
    ids = torch.randint(3, 97, (len(lengths), n))
    mask = torch.zeros_like(ids)
    for i, length in enumerate(lengths):
        mask[i, n - length:] = 1
        ids[i, : n - length] = 0
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        for i, length in enumerate(lengths):
            alone = model(ids[i : i + 1, n - length:]).logits
            torch.testing.assert_close(batched[i, n - length:], alone[0], rtol=1e-9, atol=1e-9)


def test_right_padding_needs_no_treatment():
    model = make_model()
    ids = torch.randint(3, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, :5]).logits
    torch.testing.assert_close(padded[1, :5], alone[0])


def test_window_is_active_and_global_layers_see_everything():
    """Changing a token far outside every window changes the output only through global/SSM paths."""
    swa_attention_only = make_model(mixer_type="attention", global_attn_idx=[], kv_reuse_group=[])
    ids = torch.randint(3, 97, (1, 30))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 97
    with torch.no_grad():
        a, b = swa_attention_only(ids).logits, swa_attention_only(changed).logits
    # receptive field of 5 stacked windows of 6: position 0 reaches at most 30 positions
    reach = 5 * 6
    assert torch.allclose(a[0, reach:], b[0, reach:])
    assert not torch.allclose(a[0, 1:6], b[0, 1:6])
    full = make_model(mixer_type="attention", sliding_window=None, kv_reuse_group=[])
    with torch.no_grad():
        a, b = full(ids).logits, full(changed).logits
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_meta_tokens_are_prepended_and_stripped():
    model = make_model()
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (2, 7, 97)
    assert out.hidden_states[0].shape == (2, 7 + 4, 32)
    torch.testing.assert_close(out.hidden_states[0][0, :4], model.model.memory_tokens.detach())


def test_gradients_reach_every_parameter():
    model = make_model().float().train()
    ids = torch.randint(3, 97, (2, 12))
    model(ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_activation_checkpointing_gives_same_gradients():
    model = make_model().train()
    ids = torch.randint(3, 97, (2, 12))
    model(ids, labels=ids).loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], msg=n)


@pytest.mark.parametrize(
    "ids, mask, message",
    [
        (torch.zeros(1, 0, dtype=torch.long), None, "empty"),
        (torch.zeros(0, 3, dtype=torch.long), None, "empty"),
        ([[1, 2]], None, "tensor, got list"),
        (torch.tensor([[1, 2, 500]]), None, "outside the vocabulary"),
        (torch.tensor([[1, -1]]), None, "outside the vocabulary"),
        (torch.tensor([[1.0, 2.0]]), None, "integer"),
        (torch.tensor([1, 2]), None, r"\(batch, length\)"),
        (torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1]]), "does not match"),
        (torch.tensor([[1, 2, 3]]), torch.tensor([[1, 0, 1]]), "no holes"),
        (torch.tensor([[1, 2, 3]]), torch.tensor([[0, 0, 0]]), "no real token"),
    ],
)
def test_bad_inputs_raise_one_clear_error(ids, mask, message):
    with pytest.raises(InputError, match=message):
        make_model()(ids, attention_mask=mask)


def _loss_and_grads(model, ids, autocast: bool) -> tuple[float, torch.Tensor]:
    """The loss and all parameter gradients as one flat float32 vector."""
    model.zero_grad()
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.item(), torch.cat([p.grad.float().flatten() for p in model.parameters()])


def test_norms_feeding_linears_in_the_autocast_dtype_change_nothing(monkeypatch):
    """Under autocast the norms before linear layers produce the linear's input dtype directly:
    the same logits as casting in the linear, and the same gradients but for the MLP input's,
    whose two parts (from the gate and up products) are summed in bf16 instead of float32: a
    difference far below autocast's own."""
    from hymba import ops

    model = make_model().float().train()
    ids = torch.randint(3, 97, (2, 12))
    _, exact = _loss_and_grads(model, ids, False)

    def run():
        loss, grads = _loss_and_grads(model, ids, True)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return loss, grads, model(ids).logits

    loss, direct, logits = run()
    add_rms_norm = ops.add_rms_norm
    with monkeypatch.context() as m:  # the MLP's input cast by the linear layers
        m.setattr(ops, "add_rms_norm", lambda x, d, w, eps, out_dtype=None: add_rms_norm(x, d, w, eps))
        _, mlp_cast, _ = run()
    monkeypatch.setattr(ops, "linear_input_dtype", lambda x: None)  # every input cast by the linears
    loss_cast, cast, logits_cast = run()
    assert torch.equal(logits, logits_cast) and loss == loss_cast
    assert torch.equal(mlp_cast, cast)
    error = (direct - cast).norm() / cast.norm()
    assert 0 < error < 0.1 * (cast - exact).norm() / exact.norm()


@pytest.mark.gpu
def test_training_step_with_the_triton_kernels_matches_the_references(triton_device, monkeypatch):
    """A forward + backward through the Triton norms, SwiGLU gate, rotary and conv (with their
    backward kernels where autograd records them) against HYMBA_TRITON=0 in float32: the loss
    and every parameter's gradient."""
    model = make_model().float().train().to(triton_device)
    ids = torch.randint(3, 97, (2, 12), device=triton_device)
    monkeypatch.setenv("HYMBA_TRITON", "force")
    loss_fast, fast = _loss_and_grads(model, ids, False)
    monkeypatch.setenv("HYMBA_TRITON", "0")
    loss_ref, ref = _loss_and_grads(model, ids, False)
    assert abs(loss_fast - loss_ref) <= 1e-5 * abs(loss_ref)
    offset = 0
    for name, p in model.named_parameters():
        got, want = fast[offset: offset + p.numel()], ref[offset: offset + p.numel()]
        offset += p.numel()
        err = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"


@pytest.mark.gpu
def test_triton_kernels_under_autocast_are_as_close_to_float32_as_the_references(triton_device, monkeypatch):
    """Under bf16 autocast both paths round; the Triton kernels (float32 inside, one rounding
    per output) must get the float32 step's gradients at least about as well as the references
    (which round some intermediate gradients to bf16)."""
    model = make_model().float().train().to(triton_device)
    ids = torch.randint(3, 97, (2, 12), device=triton_device)
    monkeypatch.setenv("HYMBA_TRITON", "0")
    _, exact = _loss_and_grads(model, ids, False)
    _, ref = _loss_and_grads(model, ids, True)
    monkeypatch.setenv("HYMBA_TRITON", "force")
    _, fast = _loss_and_grads(model, ids, True)
    ref_err = ((ref - exact).norm() / exact.norm()).item()
    fast_err = ((fast - exact).norm() / exact.norm()).item()
    assert fast_err <= 1.1 * ref_err, f"Triton {fast_err:.3f} vs references {ref_err:.3f}"
