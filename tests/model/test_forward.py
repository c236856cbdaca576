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
