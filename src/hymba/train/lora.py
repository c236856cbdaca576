"""LoRA fine-tuning through PEFT (``pip install 'hymba[hf]'``): the settings of ``--lora``,
wrapping a model, and merging a saved adapter into its base (``hymba merge-lora``).

Adapters are saved in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``)
with the tensor names of the transformers wrapper (``hymba.hf``, whose model is its submodule
``hymba``: ``base_model.model.hymba.model.layers...``) and ``task_type: CAUSAL_LM``, so an
adapter from ``hymba train --lora`` loads with ``PeftModel.from_pretrained`` on
``AutoModelForCausalLM``, and one trained through PEFT on the wrapper merges with
``hymba merge-lora``. (Adapters saved from a bare :class:`~hymba.HymbaForCausalLM`, named
``base_model.model.model.layers...``, are read too.)

Which projections can carry an adapter: those the model calls as modules on every path
(prefill, eager decode, CUDA-graph decode). The fused in_proj covers the attention's Q/K/V and
the SSM's x/z columns. ``dt_proj`` and ``conv1d`` hand their weights straight to the SSM kernels,
and the tied ``lm_head``/``embed_tokens`` share one matrix: those are refused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..checkpoint import CheckpointError
from ..model import HymbaForCausalLM
from ..tokenizer import load_tokenizer
from .checkpointing import load_model

# The fused in_proj (attention and SSM columns), the mixer's out_proj and the MLP.
DEFAULT_TARGETS = ("in_proj", "out_proj", "gate_proj", "up_proj", "down_proj")
SUPPORTED_TARGETS = DEFAULT_TARGETS + ("x_proj",)
REFUSED_TARGETS = {
    "dt_proj": "its weight goes straight to the SSM kernels (its bias is added in float32 inside the scan)",
    "conv1d": "its taps go straight to the SSM's conv kernels",
    "lm_head": "Hymba ties it to embed_tokens (one matrix: a merge would change both)",
    "embed_tokens": "Hymba ties it to lm_head (one matrix: a merge would change both)",
}
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoraError(ValueError):
    """Bad LoRA settings, or an adapter that cannot be used; the message says why."""


def _peft():
    try:
        import peft
    except ImportError:
        raise LoraError("LoRA needs PEFT: pip install 'hymba[hf]' (or pip install peft)") from None
    return peft


@dataclass(frozen=True)
class LoraSettings:
    """``r`` (rank), ``alpha`` (the update is scaled by alpha / r), ``dropout`` on the adapters'
    input, ``targets`` (projection names, from :data:`SUPPORTED_TARGETS`)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 1):
            raise LoraError(f"lora r must be a positive integer, got {self.r!r}")
        if not (isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool) and self.alpha > 0):
            raise LoraError(f"lora alpha must be a positive number, got {self.alpha!r}")
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0 <= self.dropout < 1):
            raise LoraError(f"lora dropout must be a number in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise LoraError("lora targets must name at least one projection")
        check_targets(self.targets)

    @classmethod
    def parse(cls, value: str | dict[str, Any] | LoraSettings) -> LoraSettings:
        """From ``"r=16,alpha=32,dropout=0.05,targets=in_proj,out_proj"`` (``targets`` last: its
        names are comma-separated too), a mapping of the same keys (``targets`` a list or a
        comma-separated string), or settings."""
        if isinstance(value, LoraSettings):
            return value
        if isinstance(value, str):
            fields: dict[str, Any] = {}
            key = None
            for item in (part.strip() for part in value.split(",")):
                if not item:
                    continue
                if "=" in item:
                    key, _, item = (s.strip() for s in item.partition("="))
                    if key in fields:
                        raise LoraError(f"lora setting {key!r} is given twice")
                    fields[key] = [item] if key == "targets" else item
                elif key == "targets":
                    fields["targets"].append(item)
                else:
                    raise LoraError(f"lora setting {item!r} is not KEY=VALUE (e.g. r=16,alpha=32)")
            value = fields
        if not isinstance(value, dict):
            raise LoraError(f"lora settings must be text like 'r=16,alpha=32' or a mapping, got {value!r}")
        unknown = sorted(set(value) - {"r", "alpha", "dropout", "targets"})
        if unknown:
            raise LoraError(f"unknown lora setting(s) {', '.join(unknown)} (use r, alpha, dropout, targets)")
        fields = dict(value)
        try:
            for key, kind in (("r", int), ("alpha", float), ("dropout", float)):
                if isinstance(fields.get(key), str):
                    fields[key] = kind(fields[key])
        except ValueError:
            raise LoraError(f"lora {key} must be a number, got {fields[key]!r}") from None
        targets = fields.get("targets", DEFAULT_TARGETS)
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise LoraError(f"lora targets must be projection names, got {targets!r}")
        check_targets(targets)
        fields["targets"] = tuple(t for t in SUPPORTED_TARGETS if t in targets)  # one order: comparable
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets)}

    def peft_config(self):
        """The ``peft.LoraConfig`` of these settings."""
        return _peft().LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                                  target_modules=list(self.targets), bias="none")


def check_targets(targets) -> None:
    """Raise :class:`LoraError` for a target name this library cannot adapt on every path."""
    for name in targets:
        if name in REFUSED_TARGETS:
            raise LoraError(f"lora target {name!r} is not supported: {REFUSED_TARGETS[name]}. "
                            f"Supported: {', '.join(SUPPORTED_TARGETS)}")
        if name not in SUPPORTED_TARGETS:
            raise LoraError(f"unknown lora target {name!r}; supported: {', '.join(SUPPORTED_TARGETS)}")


def add_lora(model: HymbaForCausalLM, settings: LoraSettings, base: str | None = None):
    """Wrap ``model``'s target projections with new LoRA adapters (in place: ``model`` now runs
    them) and freeze everything else; returns the ``peft.PeftModel`` that saves the adapter
    (``base``: the base model's folder, recorded in ``adapter_config.json``)."""
    wrapped = _peft().get_peft_model(_Holder(model), settings.peft_config())
    saved = wrapped.peft_config["default"]
    # what adapter_config.json records: the base, and the task of the transformers class whose
    # tensor names the adapter has (a PeftModel of that class loads it as a causal LM)
    saved.base_model_name_or_path, saved.task_type = base, "CAUSAL_LM"
    return wrapped


def load_lora(model: HymbaForCausalLM, folder: str, trainable: bool = False):
    """Add the adapter saved in ``folder`` to ``model`` (in place, as :func:`add_lora`); returns
    the ``peft.PeftModel``. Adapters saved from the transformers wrapper are accepted."""
    peft = _peft()
    _read_adapter_config(folder)
    saved = _tensor_names(folder)
    holder = _Holder(model) if any(n.startswith("base_model.model.hymba.") for n in saved) else model
    try:
        config = peft.LoraConfig.from_pretrained(folder)
        config.task_type = None  # a plain PeftModel: the holder is no transformers model
        wrapped = peft.PeftModel.from_pretrained(holder, folder, is_trainable=trainable, config=config)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoraError(f"the adapter in {folder} does not fit this model: {first}") from None
    check_lora_layers(model)
    # every saved tensor went into an adapter of this model, and every adapter got one (PEFT
    # only warns about either: an adapter for another model shape would load partly)
    made = {n.replace(".default.", ".") for n, _ in wrapped.named_parameters() if "lora_" in n}
    for names, what in ((saved - made, "weights for modules this model lacks"),
                        (made - saved, "no weights for adapted modules")):
        if names:
            raise LoraError(f"the adapter in {folder} does not fit this model: it has {what}, such as "
                            f"{min(names)} ({len(names)} in all)")
    return wrapped


def lora_settings_of(folder: str) -> LoraSettings:
    """The settings an adapter folder was saved with (its ``adapter_config.json``)."""
    config = _read_adapter_config(folder)
    targets = config.get("target_modules")
    if isinstance(targets, str):
        raise LoraError(f"{folder}: target_modules is a pattern ({targets!r}); name the projections")
    return LoraSettings.parse({"r": config.get("r"), "alpha": config.get("lora_alpha"),
                               "dropout": config.get("lora_dropout", 0.0), "targets": targets or []})


def check_lora_layers(model: nn.Module) -> None:
    """Raise :class:`LoraError` if a module of ``model`` that carries an adapter is not one of
    :data:`SUPPORTED_TARGETS`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            check_targets([name.rsplit(".", 1)[-1]])


def is_adapter_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, ADAPTER_CONFIG))


def merge_lora(base: str | None, adapter: str, out: str, overwrite: bool = False) -> str:
    """Write ``base`` with the adapter of folder ``adapter`` merged in (W + scale·B·A for every
    adapted projection) to ``out`` in the released format (``config.json``, safetensors,
    tokenizer and generation config), in the base checkpoint's dtype (a sharded training
    checkpoint of ``--parallel fsdp`` is read from its shards); the merge itself is computed in
    float32. ``base`` None: the folder the adapter names (``base_model_name_or_path``).
    The tokenizer comes from the adapter folder if it has one (a fine-tune may change the chat
    template), else from the base. Returns ``out``."""
    from ..hub import resolve_model_dir

    config = _read_adapter_config(adapter)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise LoraError(f"{adapter}/{ADAPTER_CONFIG} names no base model: pass --base")
    if os.path.exists(out) and (not os.path.isdir(out) or (os.listdir(out) and not overwrite)):
        raise LoraError(f"output folder {out} already exists and is not empty (pass --overwrite to replace it)")
    base_dir = resolve_model_dir(base)
    model = load_model(base_dir)  # a sharded training checkpoint of `--parallel fsdp` too
    dtype = model.dtype
    wrapped = load_lora(model.float(), adapter)
    merged = wrapped.merge_and_unload()
    if isinstance(merged, _Holder):
        merged = merged.hymba
    merged = merged.to(dtype)
    tmp = out.rstrip("/") + ".tmp-merge"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer_dir = adapter if os.path.isfile(os.path.join(adapter, "tokenizer.json")) else base_dir
    load_tokenizer(tokenizer_dir).save(tmp)
    generation = os.path.join(base_dir, "generation_config.json")
    if os.path.isfile(generation):
        shutil.copy(generation, os.path.join(tmp, "generation_config.json"))
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------------------


class _Holder(nn.Module):
    """Puts a model under the attribute name the transformers wrapper gives it (``hymba``): the
    adapters' tensor names are then those of the wrapper."""

    def __init__(self, model: HymbaForCausalLM) -> None:
        super().__init__()
        self.hymba = model


def _read_adapter_config(folder: str) -> dict[str, Any]:
    _check_adapter_folder(folder)
    path = os.path.join(folder, ADAPTER_CONFIG)
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoraError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise LoraError(f"{path} is not a LoRA adapter config (peft_type LORA)")
    return config


def _check_adapter_folder(folder: str) -> None:
    if not os.path.isdir(folder):
        raise LoraError(f"adapter folder {folder} does not exist")
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not os.path.isfile(os.path.join(folder, name)):
            raise LoraError(f"{folder} is not a LoRA adapter folder: no {name}")


def _tensor_names(folder: str) -> set[str]:
    """The tensor names of the adapter's weights file (``base_model.model.hymba...`` for the
    transformers wrapper's, ``base_model.model.model...`` for a bare model's)."""
    from safetensors import SafetensorError, safe_open

    path = os.path.join(folder, ADAPTER_WEIGHTS)
    try:
        with safe_open(path, "pt") as fh:
            return set(fh.keys())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


__all__ = ["DEFAULT_TARGETS", "SUPPORTED_TARGETS", "LoraError", "LoraSettings", "add_lora", "check_lora_layers",
           "is_adapter_folder", "load_lora", "lora_settings_of", "merge_lora"]
