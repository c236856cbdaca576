"""PEFT LoRA on the transformers class (hymba.hf): transformers' Trainer trains the adapters,
generate runs them, and the adapter merges (PEFT's merge and ``hymba merge-lora`` agree)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from hubkit import released_folder

from hymba import HymbaForCausalLM
from hymba.cli import main

transformers = pytest.importorskip("transformers", minversion="5",
                                   reason="needs transformers >= 5 (pip install 'hymba[hf]')")
peft = pytest.importorskip("peft", reason="needs peft (pip install 'hymba[hf]')")
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments  # noqa: E402

from hymba.train.lora import LoraSettings, add_lora  # noqa: E402

TARGETS = ["in_proj", "out_proj", "x_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def folder(fixture_dir, tmp_path_factory):
    return released_folder(fixture_dir, tmp_path_factory.mktemp("hymba-peft"))


class _Rows(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_trainer_trains_peft_lora_which_generates_and_merges(folder, tmp_path):
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                                peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=TARGETS))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 500, (4, 16), generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, learning_rate=1e-2, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=_Rows(ids)).train()
    after = dict(model.named_parameters())
    for name, old in before.items():  # B moved (A has no gradient while B is zero); the base did not
        changed = not torch.equal(after[name].detach(), old)
        assert changed if "lora_B" in name else "lora_A" in name or not changed, name
    model.eval()
    prompt = ids[:2, :6]
    out = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                         output_logits=True)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")

    # hymba merge-lora on the adapter PEFT saved
    assert main(["merge-lora", "--base", str(folder), "--adapter", str(tmp_path / "adapter"),
                 "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    again = merged.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                            output_logits=True)
    assert torch.equal(again.sequences, out.sequences)
    torch.testing.assert_close(torch.stack(again.logits), torch.stack(out.logits), rtol=0, atol=1e-4)
    with torch.no_grad():
        assert (merged(ids).logits - logits).abs().max() < 1e-4
        # PEFT's own merge gives the same model
        own = model.merge_and_unload()
        assert (own(ids).logits - logits).abs().max() < 1e-4
        # and the adapter folder loads through the Auto class (transformers' PEFT integration)
        assert (AutoModelForCausalLM.from_pretrained(tmp_path / "adapter")(ids).logits - logits).abs().max() < 1e-4


def test_hymba_train_adapter_loads_with_peft_on_the_auto_class(folder, tmp_path):
    model = HymbaForCausalLM.from_pretrained(folder)
    wrapped = add_lora(model, LoraSettings(r=4, alpha=8), base=str(folder))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    wrapped.save_pretrained(tmp_path / "adapter")
    auto = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "adapter")
    assert type(auto).__name__ == "PeftModelForCausalLM"  # the adapter's task_type: CAUSAL_LM
    ids = torch.randint(3, 500, (2, 12))
    with torch.no_grad():
        want = model.eval()(ids).logits
        assert (auto.eval()(input_ids=ids).logits - want).abs().max() < 1e-5
        assert (AutoModelForCausalLM.from_pretrained(folder)(ids).logits - want).abs().max() > 1e-2


def test_loss_over_num_items_in_batch(folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.randint(3, 500, (2, 10))
    labels = ids.clone()
    labels[0, :4] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, num_items_in_batch=torch.tensor(40))
        summed = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                                 reduction="sum")
        torch.testing.assert_close(out.loss, summed / 40)
        torch.testing.assert_close(model(input_ids=ids, labels=labels).loss, summed / (labels[:, 1:] != -100).sum())


def test_generate_without_generation_config_json(folder, tmp_path):
    """A folder that hymba train or merge-lora wrote from such a base has no generation_config.json:
    the flags transformers then takes from the model config (output_attentions=False, ...) are no
    setting hymba refuses."""
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    os.remove(bare / "generation_config.json")
    model = AutoModelForCausalLM.from_pretrained(bare)
    ids = torch.tensor([[5, 6, 7]])
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, HymbaForCausalLM.from_pretrained(bare).generate(ids, max_new_tokens=4, eos_token_id=[2]))
    with pytest.raises(ValueError, match="does not support output_attentions"):
        model.generate(input_ids=ids, max_new_tokens=4, output_attentions=True)


def test_activation_checkpointing_uses_hymbas_own(folder, tmp_path):
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                                peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=TARGETS))
    inner = model.get_base_model()
    ids = torch.randint(3, 500, (2, 12))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    inner.activation_checkpointing_enable()
    assert inner.hymba.model.gradient_checkpointing
    again = model(input_ids=ids, labels=ids).loss
    again.backward()
    torch.testing.assert_close(again, loss)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, want[name], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="non-reentrantly"):
        inner.activation_checkpointing_enable({"use_reentrant": True})
    inner.activation_checkpointing_disable()
    assert not inner.hymba.model.gradient_checkpointing
    # transformers' Trainer turns it on through the same method
    flag = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
        else "gradient_checkpointing"
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=2,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                             **{flag: True})
    Trainer(model=model, args=args, train_dataset=_Rows(ids)).train()
    assert inner.hymba.model.gradient_checkpointing
