"""generate(): batched left-padded generation equals per-prompt generation, sampling, stopping,
streaming and input errors."""

from __future__ import annotations

import math

import pytest
import torch
from test_cache import make_model
from tokenkit import write_tokenizer

from hymba import InputError, load_tokenizer
from hymba.inference import SamplingConfig, stream


@pytest.fixture(scope="module")
def tiny():
    return make_model("tiny", scale=0.05)  # window 64, 16 meta tokens


def left_pad(prompts: list[list[int]], pad: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask


def test_batched_equals_per_prompt(tiny):
    g = torch.Generator().manual_seed(0)
    # short, window-length, longer than window + meta tokens, and one token
    prompts = [torch.randint(3, 2048, (n,), generator=g).tolist() for n in (5, 64, 100, 1)]
    ids, mask = left_pad(prompts, pad=1234)  # a real token id as padding: the mask must matter
    batch = tiny.generate(ids, mask, max_new_tokens=8, eos_token_id=[], output_logits=True)
    assert batch.sequences.shape == (4, 100 + 8)
    assert torch.equal(batch.sequences[:, :100], ids)
    for row, p in enumerate(prompts):
        alone = tiny.generate(torch.tensor([p]), max_new_tokens=8, eos_token_id=[], output_logits=True)
        assert batch.sequences[row, 100:].tolist() == alone.sequences[0, len(p) :].tolist()
        torch.testing.assert_close(batch.logits[row], alone.logits[0], rtol=0, atol=1e-4)


def test_rows_stop_at_eos_and_are_padded():
    model = make_model()
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    free = model.generate(ids, max_new_tokens=6, eos_token_id=[], output_logits=True)
    eos = int(free.sequences[0, 4])  # the second new token of row 0 becomes "EOS"
    out = model.generate(ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=0, output_logits=True)
    row0 = out.sequences[0, 3:].tolist()
    assert row0[:2] == free.sequences[0, 3:5].tolist() and set(row0[2:]) <= {0}
    assert out.num_new[0] == 2
    first_eos = (free.sequences[1, 3:] == eos).nonzero()
    n1 = int(first_eos[0]) + 1 if len(first_eos) else 6
    assert out.sequences[1, 3 : 3 + n1].tolist() == free.sequences[1, 3 : 3 + n1].tolist()
    assert out.num_new[1] == n1


def test_sampling_is_seeded_and_filters_work():
    model = make_model()
    ids = torch.tensor([[3, 4, 5, 6]])
    a = model.generate(ids, max_new_tokens=8, do_sample=True, seed=7)
    assert torch.equal(a, model.generate(ids, max_new_tokens=8, do_sample=True, seed=7))
    assert any(not torch.equal(a, model.generate(ids, max_new_tokens=8, do_sample=True, seed=s)) for s in range(3))
    greedy = model.generate(ids, max_new_tokens=8, eos_token_id=[])
    for kw in (dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4)):
        assert torch.equal(model.generate(ids, max_new_tokens=8, eos_token_id=[], do_sample=True, seed=1, **kw), greedy)


def test_sampling_scores():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(SamplingConfig(do_sample=True, top_k=2).scores(logits, None)[0, 2:]).all()
    probs = logits.softmax(-1)[0]  # 0.64, 0.24, 0.09, 0.03
    kept = SamplingConfig(do_sample=True, top_p=0.8).scores(logits, None)[0]
    assert torch.isfinite(kept[:2]).all() and torch.isinf(kept[2:]).all() and probs[0] < 0.8
    seen = torch.tensor([[True, False, False, True]])
    pen = SamplingConfig(repetition_penalty=2.0).scores(logits, seen)[0]
    assert pen.tolist() == [1.0, 1.0, 0.0, -2.0]
    assert SamplingConfig(do_sample=True, temperature=0.5).scores(logits, None)[0, 0] == 4.0


def test_repetition_penalty_discourages_repeats():
    model = make_model()
    ids = torch.tensor([[3, 4, 5, 6]])
    plain = model.generate(ids, max_new_tokens=20, eos_token_id=[])[0, 4:].tolist()
    strict = model.generate(ids, max_new_tokens=20, eos_token_id=[], repetition_penalty=1e6)[0].tolist()
    assert len(set(strict)) == len(strict) > len(set(plain))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(swa_decode="fast"), "swa_decode"),
        (dict(seed="x"), "seed"),
        (dict(max_new_tokens=600), "maximum of 512"),
    ],
)
def test_invalid_arguments(kwargs, message):
    model = make_model()
    with pytest.raises(InputError, match=message):
        model.generate(torch.tensor([[3, 4]]), **kwargs)


def test_invalid_prompts():
    model = make_model()
    with pytest.raises(InputError, match="empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match="no real token"):
        model.generate(torch.tensor([[3, 4]]), torch.tensor([[0, 0]]))
    with pytest.raises(InputError, match="token id 97 is outside"):
        model.generate(torch.tensor([[3, 97]]))
    with pytest.raises(InputError, match="token id -1 is outside"):
        model.generate(torch.tensor([[-1, 3]]))
    with pytest.raises(InputError, match="maximum of 512"):
        model.generate(torch.randint(3, 90, (1, 513)), max_new_tokens=1)
    # padding positions may hold anything
    model.generate(torch.tensor([[999, 3]]), torch.tensor([[0, 1]]), max_new_tokens=1)


# ---------------------------------------------------------------------------------------------
# Text: stop strings and streaming, with a small byte-level BPE tokenizer


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(folder)
    tokenizer = load_tokenizer(folder)
    model = make_model(vocab_size=len(tokenizer), scale=0.5)
    return model, tokenizer


def test_stream_yields_the_generated_text(text_model):
    model, tok = text_model
    pieces = list(stream(model, tok, "the quick", max_new_tokens=15))
    ids = torch.tensor([tok.encode("the quick")])
    full = model.generate(ids, max_new_tokens=15, eos_token_id=tok.eos_token_id)[0, ids.shape[1] :].tolist()
    full = full[: full.index(tok.eos_token_id)] if tok.eos_token_id in full else full
    assert "".join(pieces) == tok.decode(full) and len(pieces) > 1


def test_stop_strings_cut_generation_and_stream(text_model):
    model, tok = text_model
    ids = torch.tensor([tok.encode("the quick")])
    free = model.generate(ids, max_new_tokens=15, eos_token_id=[])[0, ids.shape[1] :].tolist()
    text = tok.decode(free)
    stop = text[5:8]  # a stop string that occurs in the free-running text
    assert stop and stop in text
    pieces = list(stream(model, tok, "the quick", max_new_tokens=15, stop_strings=[stop]))
    assert "".join(pieces) == text[: text.find(stop)]
    out = model.generate(ids, max_new_tokens=15, eos_token_id=[], stop_strings=[stop], tokenizer=tok,
                         pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1] :].tolist()
    kept = [t for t in new if t != tok.pad_token_id]
    assert stop in tok.decode(kept) and stop not in tok.decode(kept[:-1])
    assert len(new) < 15  # the only row stopped, so generation ended early
    with pytest.raises(InputError, match="tokenizer"):
        model.generate(ids, stop_strings=["x"])


def test_stream_checks_sampling_arguments_as_generate_does(text_model):
    model, tok = text_model
    with pytest.raises(InputError, match="top_p"):  # 0 was once read as "no top-p"
        list(stream(model, tok, "the quick", do_sample=True, top_p=0.0))


def test_step_logits_are_not_kept_unless_asked(monkeypatch):
    """generate() without output_logits holds no step's logits past the step that used them."""
    import weakref

    import hymba.inference.generation as generation

    model = make_model()
    produced: list = []
    original = generation.decode_logits

    def spy(m, tokens, cache):
        logits = original(m, tokens, cache)
        produced.append(weakref.ref(logits))
        # two steps back, nothing may hold the logits any more
        assert all(r() is None for r in produced[:-2]), "generate kept an old step's logits"
        return logits

    monkeypatch.setattr(generation, "decode_logits", spy)
    model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=12, eos_token_id=[])
    assert len(produced) == 11
    kept = model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=4, eos_token_id=[], output_logits=True)
    assert kept.logits.shape == (1, 4, model.config.vocab_size)


def test_decode_steps_read_nothing_back_from_the_device(monkeypatch):
    """Apart from the finished-rows flag (read asynchronously on CUDA), a decode step asks the
    device for no value: no bool(), item(), tolist(), cpu() or numpy() on a tensor."""
    import hymba.inference.generation as generation

    model = make_model()
    monkeypatch.setattr(generation._DoneFlag, "all_done", lambda self: False)
    loop = generation.DecodeLoop(model, torch.tensor([[3, 4, 5], [6, 7, 8]]),
                                 options=generation.GenerationOptions(max_new_tokens=10, eos_token_id=[5]))
    steps = iter(loop)
    next(steps)  # the prefill and the first token may read the device
    reads = []
    for name in ("__bool__", "item", "tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _n=name, _o=original, **k: reads.append(_n) or _o(self, *a, **k))
    count = sum(1 for _ in steps)
    monkeypatch.undo()
    assert count == 9 and reads == []


def test_stream_takes_eos_token_id(text_model):
    model, tok = text_model
    ids = tok.encode("the quick")
    free = model.generate(torch.tensor([ids]), max_new_tokens=12, eos_token_id=[])[0, len(ids):].tolist()
    stop = free[3]
    text = "".join(stream(model, tok, ids, max_new_tokens=12, eos_token_id=stop))
    assert text == tok.decode(free[: free.index(stop)])
    with pytest.raises(InputError, match="unknown generation option 'max_tokens'"):
        list(stream(model, tok, ids, max_tokens=3))


def test_seed_outside_a_generator_range_is_one_clear_error():
    with pytest.raises(InputError, match="seed"):
        make_model().generate(torch.tensor([[3, 4]]), do_sample=True, seed=2**64)
