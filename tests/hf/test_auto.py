"""transformers Auto classes, pipeline and generate on the reference fixture (hymba.hf)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hubkit import released_folder
from safetensors import safe_open
from safetensors.torch import load_file

import hymba
from hymba import HymbaForCausalLM, load_tokenizer

transformers = pytest.importorskip("transformers", minversion="5",
                                   reason="needs transformers >= 5 (pip install 'hymba[hf]')")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

from hymba.hf import HymbaHFConfig, HymbaHFForCausalLM  # noqa: E402

SRC = Path(hymba.__file__).resolve().parents[1]
# The released config.json names the reference's remote code; these stand-ins fail if run.
RELEASED_AUTO_MAP = {"AutoConfig": "configuration_hymba.HymbaConfig",
                     "AutoModelForCausalLM": "modeling_hymba.HymbaForCausalLM"}


@pytest.fixture(scope="module")
def folder(fixture_dir, tmp_path_factory):
    """The fixture checkpoint with the bundled tokenizer (vocab 2048 > 512: prompts use ids < 512)."""
    return released_folder(fixture_dir, tmp_path_factory.mktemp("hymba-hf"))


@pytest.fixture(scope="module")
def auto_model(folder):
    return AutoModelForCausalLM.from_pretrained(folder)


@pytest.fixture(scope="module")
def own_model(folder):
    return HymbaForCausalLM.from_pretrained(folder)


def left_padded(prompts: list[list[int]], pad: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


def test_auto_classes_give_the_reference_logits(folder, fixture_dir, auto_model, own_model):
    assert type(AutoConfig.from_pretrained(folder)) is HymbaHFConfig
    assert type(auto_model) is HymbaHFForCausalLM and auto_model.dtype == torch.float32
    inputs = load_file(fixture_dir / "inputs.safetensors")
    expected = load_file(fixture_dir / "expected.safetensors")
    with torch.no_grad():
        for name, ids in inputs.items():
            logits = auto_model(ids).logits
            assert (logits - expected[name]).abs().max().item() <= 1e-4, name
            assert torch.equal(logits, own_model(ids).logits)
        ids = inputs["len16"]
        out = auto_model(input_ids=ids, labels=ids, output_hidden_states=True)
        assert torch.equal(out.loss, own_model(ids, labels=ids).loss)
        assert len(out.hidden_states) == auto_model.config.num_hidden_layers + 1


def test_released_auto_map_still_loads_our_class(folder, tmp_path, fixture_dir):
    released = tmp_path / "released"
    shutil.copytree(folder, released)
    config = json.loads((released / "config.json").read_text())
    (released / "config.json").write_text(json.dumps({**config, "auto_map": RELEASED_AUTO_MAP}))
    for name in ("configuration_hymba.py", "modeling_hymba.py"):
        (released / name).write_text("raise RuntimeError('remote code was executed')\n")
    ids = load_file(fixture_dir / "inputs.safetensors")["len7"]
    expected = load_file(fixture_dir / "expected.safetensors")["len7"]
    for trust in (None, False, True):
        model = AutoModelForCausalLM.from_pretrained(released, trust_remote_code=trust)
        assert type(model) is HymbaHFForCausalLM
        with torch.no_grad():
            assert (model(ids).logits - expected).abs().max().item() <= 1e-4
    assert type(AutoConfig.from_pretrained(released, trust_remote_code=True)) is HymbaHFConfig


def test_generate_matches_the_reference_greedy_tokens(auto_model, fixture_dir):
    prompts = json.loads((fixture_dir / "generation.json").read_text())["prompts"]
    logits = load_file(fixture_dir / "generation_logits.safetensors")
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt["prompt_ids"]])
        out = auto_model.generate(ids, max_new_tokens=40, eos_token_id=None, do_sample=False,
                                  return_dict_in_generate=True, output_logits=True)
        assert out.sequences[0, ids.shape[1]:].tolist() == prompt["nocache_greedy_ids"], f"prompt {i}"
        step_logits = torch.stack(out.logits, 1)[0]
        assert (step_logits - logits[f"prompt{i}.nocache_step_logits"]).abs().max().item() <= 1e-4


def test_generate_left_padded_batch_equals_hymba_generate(auto_model, own_model, fixture_dir):
    prompts = [p["prompt_ids"] for p in json.loads((fixture_dir / "generation.json").read_text())["prompts"]]
    ids, mask = left_padded(prompts)
    theirs = auto_model.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=None, pad_token_id=0)
    ours = own_model.generate(ids, mask, max_new_tokens=20, eos_token_id=[], pad_token_id=0)
    assert theirs.dtype == torch.long and torch.equal(theirs, ours)
    # a stop token: finished rows are padded, as in transformers; repetition penalty
    eos = int(ours[0, ids.shape[1] + 3])
    theirs = auto_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos,
                                 pad_token_id=5, repetition_penalty=1.3)
    ours = own_model.generate(ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=5,
                              repetition_penalty=1.3)
    assert torch.equal(theirs, ours)
    # sampling draws from torch's generator: repeatable under torch.manual_seed
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(auto_model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True,
                                        temperature=0.7, top_k=20, top_p=0.9))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (3, ids.shape[1] + 6)


def test_pipeline_generates_hymbas_greedy_tokens(folder, own_model):
    generator = pipeline("text-generation", model=str(folder))
    assert type(generator.model) is HymbaHFForCausalLM
    text = "kx zq wv"  # bundled-tokenizer ids all below the fixture's vocabulary of 512
    ids = load_tokenizer(folder).encode(text)
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == ids
    out = generator(text, max_new_tokens=10, do_sample=False, return_tensors=True)
    expected = own_model.generate(torch.tensor([ids]), max_new_tokens=10)[0].tolist()
    assert out[0]["generated_token_ids"] == expected
    assert generator(text, max_new_tokens=10, do_sample=False)[0]["generated_text"].startswith(text)
    # a batch of two is left-padded by the pipeline: each row gives what it gives alone
    texts = [text, "kx"]
    batched = generator(texts, max_new_tokens=4, do_sample=False, batch_size=2, return_tensors=True)
    for t, rows in zip(texts, batched):
        alone = generator(t, max_new_tokens=4, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
        assert rows[0]["generated_token_ids"][-len(alone):] == alone


@pytest.mark.parametrize("kwargs", [
    dict(num_beams=2), dict(num_return_sequences=2, do_sample=True), dict(min_new_tokens=3),
    dict(output_scores=True, return_dict_in_generate=True), dict(no_repeat_ngram_size=2),
    dict(streamer=object()), dict(inputs_embeds=torch.zeros(1, 3, 64)), dict(foo=1),
])
def test_unsupported_generation_arguments_fail_clearly(auto_model, kwargs):
    with pytest.raises(ValueError, match="hymba's generate does not support"):
        auto_model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=2, **kwargs)


def test_save_pretrained_writes_the_released_format(auto_model, own_model, tmp_path, fixture_dir):
    auto_model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as fh:
        keys = set(fh.keys())
    with safe_open(fixture_dir / "model.safetensors", framework="pt") as fh:
        assert keys == set(fh.keys())
    assert "model.layers.0.mamba.in_proj.weight" in keys
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == 2
    ids = load_file(fixture_dir / "inputs.safetensors")["len16"]
    with torch.no_grad():
        again = AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits
        assert torch.equal(again, own_model(ids).logits)
        assert torch.equal(HymbaForCausalLM.from_pretrained(tmp_path)(ids).logits, again)


def test_outputs_and_refusals_of_forward_generate_and_save(auto_model, tmp_path):
    ids = torch.tensor([[1, 5, 9]])
    out = auto_model.generate(ids, max_new_tokens=3, return_dict_in_generate=True)
    assert out.sequences.shape == (1, 6) and out.logits is None
    with pytest.raises(TypeError, match="forward does not support position_ids"):
        auto_model(ids, position_ids=torch.arange(3)[None].repeat(1, 1))
    with pytest.raises(ValueError, match="no past_key_values or inputs_embeds"):
        auto_model(inputs_embeds=torch.zeros(1, 3, 64))
    with pytest.raises(TypeError, match="does not support push_to_hub"):
        auto_model.save_pretrained(tmp_path, push_to_hub=True)
    auto_model.save_pretrained(tmp_path, is_main_process=False)
    assert not any(tmp_path.iterdir())
    assert auto_model(ids, return_dict=False)[0].shape == (1, 3, 512)


def test_from_pretrained_refuses_what_it_cannot_honour(folder):
    with pytest.raises(TypeError, match="does not support load_in_8bit"):
        AutoModelForCausalLM.from_pretrained(folder, load_in_8bit=True)
    with pytest.raises(ValueError, match="one device"):
        HymbaHFForCausalLM.from_pretrained(folder, device_map={"hymba.model": "cpu", "hymba.lm_head": "meta"})
    model = HymbaHFForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="cpu")
    assert model.dtype == torch.bfloat16
    config = AutoConfig.from_pretrained(folder, sliding_window=8)
    with pytest.raises(hymba.CheckpointError, match="config passed differs"):
        AutoModelForCausalLM.from_pretrained(folder, config=config)


SCRIPT = """
import sys
{first}
assert ("transformers" in sys.modules) == {imported!r}, "import hymba imported transformers"
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
assert CONFIG_MAPPING["hymba"].__name__ == "HymbaHFConfig"
print("ok")
"""


@pytest.mark.parametrize("first, imported", [("import hymba", False),
                                             ("import transformers\nimport hymba", True)])
def test_import_hymba_registers_without_importing_transformers(first, imported):
    code = SCRIPT.format(first=first, imported=imported)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_an_old_transformers_is_left_alone(monkeypatch):
    from hymba import _hf_hook

    # the module in sys.modules (transformers swaps it when its pipelines are imported)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.44.0")
    with pytest.warns(UserWarning, match="transformers 4.44.0 is older than 5.0"):
        _hf_hook.register()
