"""Training checkpoints that never lose work.

A checkpoint ``OUT/checkpoint-00000100/`` holds the released-format model (``config.json``,
``model.safetensors``; a LoRA run: the adapter in PEFT's format), the tokenizer files,
``optimizer.pt`` (the optimizer's state dict: plain tensors and numbers), ``rng.pt`` (RNG states) and ``trainer_state.json`` (step, data position,
training arguments). It is written into a hidden temporary folder that is renamed into place only
when complete, so a crash during a save leaves the previous checkpoints as they were. Everything
is read back with ``torch.load(weights_only=True)``; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..model import HymbaForCausalLM
from ..tokenizer import HymbaTokenizer

STATE_NAME = "trainer_state.json"
_CKPT = re.compile(r"checkpoint-(\d+)")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints of a run folder as ``(step, path)``, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        m = _CKPT.fullmatch(name)
        path = os.path.join(run_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_NAME)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def resolve_resume(path: str) -> str:
    """The checkpoint to resume from: ``path`` itself or the newest one in the run folder ``path``."""
    if os.path.isfile(os.path.join(path, STATE_NAME)):
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"no complete checkpoint to resume from in {path}")
    return found[-1][1]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_folder(folder: str, model: HymbaForCausalLM, tokenizer: HymbaTokenizer) -> None:
    """Released-format model plus tokenizer files (what ``hymba generate --model`` reads); for a
    LoRA run, ``model`` is the ``peft.PeftModel`` and the folder gets its adapter instead
    (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    model.save_pretrained(folder)
    tokenizer.save(folder)


def publish(tmp: str, final: str) -> None:
    """Move a finished temporary folder into place (replacing an older folder of the same name)."""
    old = None
    if os.path.exists(final):
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    run_dir: str,
    step: int,
    model: HymbaForCausalLM,
    tokenizer: HymbaTokenizer,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> str:
    """Write ``checkpoint-<step>`` atomically and delete all but the newest ``keep`` checkpoints."""
    final = os.path.join(run_dir, checkpoint_name(step))
    tmp = os.path.join(run_dir, f".tmp-{checkpoint_name(step)}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_model_folder(tmp, model, tokenizer)
    torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
    torch.save(rng_state(), os.path.join(tmp, "rng.pt"))
    with open(os.path.join(tmp, STATE_NAME), "w", encoding="utf-8") as fh:
        json.dump({"step": step, **state}, fh, indent=2)
    publish(tmp, final)
    if keep > 0:
        for _, path in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def remove_stale_temporaries(run_dir: str) -> None:
    """Delete leftovers of interrupted saves (never complete checkpoints); put back a checkpoint
    that a save of the same step had moved aside before it was interrupted."""
    if not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name.endswith(".old") and not os.path.exists(path[: -len(".old")]):
            os.replace(path, path[: -len(".old")])
        elif name.startswith(".tmp-") or name.endswith(".old"):
            shutil.rmtree(path, ignore_errors=True)


def read_trainer_state(path: str) -> dict[str, Any]:
    """The ``trainer_state.json`` of checkpoint ``path`` (step, data position, arguments)."""
    file = os.path.join(path, STATE_NAME)
    try:
        with open(file, encoding="utf-8") as fh:
            state = json.load(fh)
    except OSError as exc:
        raise CheckpointError(f"cannot read {file}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{file} is corrupt: not valid JSON") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int)
            and isinstance(state.get("args", {}), dict)):
        raise CheckpointError(f"{file} is not a training state: it needs a step and the arguments")
    return state


def _load_tensors(file: str, mmap: bool = False) -> Any:
    try:
        return torch.load(file, weights_only=True, map_location="cpu", mmap=mmap)
    except OSError as exc:
        raise CheckpointError(f"cannot read {file}: {exc.strerror or exc}") from None
    except Exception:  # a truncated or foreign file fails in the unpickler, whatever its error type
        raise CheckpointError(f"{file} is corrupt or not written by hymba train") from None


def check_training_state(path: str) -> None:
    """Raise :class:`CheckpointError` if checkpoint ``path``'s training state cannot be read
    (the tensor files are memory-mapped, not read into memory)."""
    read_trainer_state(path)
    for name in ("optimizer.pt", "rng.pt"):
        _load_tensors(os.path.join(path, name), mmap=True)


def load_training_state(path: str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer and RNG from checkpoint ``path``; return its trainer state."""
    state = read_trainer_state(path)
    opt_state = _load_tensors(os.path.join(path, "optimizer.pt"))
    rng = _load_tensors(os.path.join(path, "rng.pt"))
    try:
        optimizer.load_state_dict(opt_state)
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the optimizer or RNG state in {path} does not fit this run: {exc}") from None
    return state
