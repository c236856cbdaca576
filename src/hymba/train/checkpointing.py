"""Training checkpoints that never lose work.

A checkpoint ``OUT/checkpoint-00000100/`` of a one-process or DDP run holds the released-format
model (``config.json``, ``model.safetensors``; a LoRA run: the adapter in PEFT's format), the tokenizer files, ``optimizer.pt`` (the
optimizer's state dict: plain tensors and numbers), ``rng.pt`` (RNG states) and
``trainer_state.json`` (step, data position, training arguments).

A checkpoint of an FSDP run is *sharded*: instead of ``model.safetensors`` and ``optimizer.pt``
it has ``sharded/``, a ``torch.distributed.checkpoint`` (DCP) folder in which every rank wrote its
own shards of the model and optimizer state (no rank gathers the whole model), keyed by parameter
name. DCP reshards on load, so such a checkpoint resumes on any number of processes: FSDP on M
ranks, DDP, or one process. ``hymba export`` (:func:`export_checkpoint`) turns it into the
released format; the run's ``final/`` is always in the released format. Every rank must write to
the same folder: on several nodes, the run folder must be on a shared filesystem.

Either kind is written into a hidden temporary folder that is renamed into place only when
complete (for a sharded one: after every rank has written its shards), so a crash during a save,
even of one rank, leaves the previous checkpoints as they were. Everything is read back without
unpickling arbitrary objects: tensor files with ``torch.load(weights_only=True)``, DCP's pickled
index through an unpickler that admits only DCP's own metadata classes.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..config import HymbaConfig
from ..model import HymbaForCausalLM
from ..tokenizer import HymbaTokenizer

STATE_NAME = "trainer_state.json"
SHARDED_DIR = "sharded"  # the DCP folder of a sharded (FSDP) checkpoint
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
    _finish_checkpoint(run_dir, tmp, final, step, state, keep)
    return final


def _finish_checkpoint(run_dir: str, tmp: str, final: str, step: int, state: dict[str, Any], keep: int) -> None:
    """Add the RNG and trainer state to the checkpoint being written in ``tmp``, rename it into
    place as ``final`` and delete all but the newest ``keep`` checkpoints."""
    torch.save(rng_state(), os.path.join(tmp, "rng.pt"))
    with open(os.path.join(tmp, STATE_NAME), "w", encoding="utf-8") as fh:
        json.dump({"step": step, **state}, fh, indent=2)
    publish(tmp, final)
    if keep > 0:
        for _, path in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


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
    (the tensor files are memory-mapped, not read into memory; of a sharded checkpoint, the
    index of the shards is read)."""
    read_trainer_state(path)
    if is_sharded(path):
        _read_dcp_metadata(os.path.join(path, SHARDED_DIR))
        _load_tensors(os.path.join(path, "rng.pt"), mmap=True)
        return
    for name in ("optimizer.pt", "rng.pt"):
        _load_tensors(os.path.join(path, name), mmap=True)


def load_training_state(path: str, optimizer: torch.optim.Optimizer,
                        model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Restore the optimizer and RNG from checkpoint ``path``; return its trainer state.

    A sharded checkpoint also restores ``model`` (unwrapped: plain, or sharded by FSDP in place);
    every rank must call this then. The optimizer state of a released-format checkpoint loaded
    into an FSDP-sharded model is cut into this rank's shards."""
    state = read_trainer_state(path)
    rng = _load_tensors(os.path.join(path, "rng.pt"))
    try:
        if is_sharded(path):
            if model is None:
                raise TypeError("a sharded checkpoint restores the model too: pass it")
            _load_sharded(os.path.join(path, SHARDED_DIR), model, optimizer)
        else:
            optimizer.load_state_dict(_load_tensors(os.path.join(path, "optimizer.pt")))
            _shard_optimizer_state(optimizer)
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise CheckpointError(f"the model, optimizer or RNG state in {path} does not fit this run: "
                              f"{exc}") from None
    return state


def _shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Cut whole-tensor optimizer state (a DDP or one-process checkpoint) into the shards of
    FSDP-sharded parameters: each rank keeps the part of every moment that its parameter shard
    covers (every rank read the same file, so no data moves between ranks)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for param, entry in optimizer.state.items():
        if not isinstance(param, DTensor):
            continue
        for key, value in entry.items():
            if torch.is_tensor(value) and not isinstance(value, DTensor) and value.shape == param.shape:
                entry[key] = distribute_tensor(value.to(param.device), param.device_mesh, param.placements,
                                               src_data_rank=None)


# ------------------------------------------------------------------------------------------------
# Sharded (DCP) checkpoints


def is_sharded(path: str) -> bool:
    """Whether checkpoint ``path`` holds DCP shards (an FSDP run's) instead of released weights."""
    return os.path.isfile(os.path.join(path, SHARDED_DIR, ".metadata"))


# What DCP's index (``.metadata``, a pickle) may contain: its own metadata records and enum,
# torch sizes, dtypes and layouts (by name), and the checkpoint's path. Anything else is refused
# instead of being constructed.
_DCP_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
     ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_GLOBALS:
            return super().find_class(module, name)
        if module == "torch":  # torch.float32, torch.strided, torch.contiguous_format, ...
            value = getattr(torch, name, None)
            if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                return value
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def _read_dcp_metadata(folder: str) -> Any:
    file = os.path.join(folder, ".metadata")
    try:
        with open(file, "rb") as fh:
            return _MetadataUnpickler(fh).load()
    except OSError as exc:
        raise CheckpointError(f"cannot read {file}: {exc.strerror or exc}") from None
    except Exception:  # a truncated or foreign file fails in the unpickler, whatever its error type
        raise CheckpointError(f"{file} is corrupt or not written by hymba train") from None


def _dcp_reader(folder: str) -> Any:
    """DCP's file reader, reading the index through :class:`_MetadataUnpickler`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = _read_dcp_metadata(folder)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(folder)


def _dcp_planner() -> Any:
    """DCP's load planner, reading non-tensor values (learning rates, step counts, parameter
    names) with ``torch.load(weights_only=True)``."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._nested_dict import set_element

                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return Planner()


def _training_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``{"model": ..., "optim": ...}`` keyed by parameter name: this rank's shards of an FSDP
    model, whole tensors of a plain one (the same names either way, so either loads the other)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def _dcp_load(state: dict[str, Any], folder: str) -> None:
    """Read DCP folder ``folder`` into ``state`` (in place): collectively under a process group,
    else in this one process (which DCP would warn about: it is meant here)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    _read_dcp_metadata(folder)  # a damaged index fails here with a clear message
    single = not (dist.is_available() and dist.is_initialized())
    with warnings.catch_warnings():
        if single:
            warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        dcp.load(state, storage_reader=_dcp_reader(folder), planner=_dcp_planner(), no_dist=single)


def load_sharded_weights(path: str, model: torch.nn.Module) -> None:
    """Load the weights of sharded checkpoint ``path`` into the plain ``model`` (a fine-tune's
    start); under a process group every rank must call this."""
    weights = {"model": model.state_dict()}
    try:
        _dcp_load(weights, os.path.join(path, SHARDED_DIR))
        model.load_state_dict(weights["model"])
    except (KeyError, RuntimeError, ValueError, AssertionError) as exc:
        raise CheckpointError(f"the weights in {path} do not fit its config.json: {exc}") from None


def load_model(path: str, dtype: torch.dtype | None = None) -> HymbaForCausalLM:
    """The model of folder ``path`` on the CPU, in one process: a sharded training checkpoint
    from its shards (in float32, as training keeps its weights), else the released-format folder
    (in ``dtype``; None: the checkpoint's)."""
    if is_sharded(path):
        model = HymbaForCausalLM(HymbaConfig.load(path))
        load_sharded_weights(path, model)
        return model
    return HymbaForCausalLM.from_pretrained(path, dtype=dtype, device="cpu")


def _load_sharded(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _training_state_dict(model, optimizer)
    _dcp_load(state, folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def save_sharded_checkpoint(
    run_dir: str,
    step: int,
    model: torch.nn.Module,
    config: HymbaConfig,
    tokenizer: HymbaTokenizer,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
    is_main: bool,
    barrier: Callable[[], None],
) -> str:
    """Write ``checkpoint-<step>`` of an FSDP-sharded ``model`` atomically; every rank calls this.

    Rank 0 (``is_main``) makes the temporary folder, every rank writes its shards into it
    (DCP's save ends once the last rank's shards and rank 0's index are written), then rank 0
    adds the config, tokenizer, RNG and trainer state and renames the folder into place.
    ``barrier()`` waits for every rank."""
    import torch.distributed.checkpoint as dcp

    final = os.path.join(run_dir, checkpoint_name(step))
    tmp = os.path.join(run_dir, f".tmp-{checkpoint_name(step)}")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    dcp.save(_training_state_dict(model, optimizer), checkpoint_id=os.path.join(tmp, SHARDED_DIR))
    if is_main:
        config.save(tmp)
        tokenizer.save(tmp)
        _finish_checkpoint(run_dir, tmp, final, step, state, keep)
    barrier()
    return final


def export_checkpoint(path: str, out: str) -> str:
    """Write checkpoint ``path`` (sharded or not; a run folder means its newest checkpoint) to
    ``out`` in the released single-folder format (config, safetensors weights, tokenizer), in
    this one process. Returns the checkpoint exported."""
    from ..tokenizer import load_tokenizer

    source = resolve_resume(path)
    if os.path.isfile(os.path.join(source, "adapter_config.json")):
        raise CheckpointError(f"{source} holds a LoRA adapter, not a model: merge it into its base with "
                              f"hymba merge-lora --adapter {source} --out {out}")
    read_trainer_state(source)
    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype=torch.float32)
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".tmp-{os.path.basename(os.path.abspath(out))}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_folder(tmp, model, tokenizer)
    publish(tmp, os.path.abspath(out))
    return source
