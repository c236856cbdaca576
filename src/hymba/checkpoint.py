"""Checkpoint I/O in the released format: ``config.json`` + safetensors (single file or shards).

The only place that knows the released state-dict key names: :func:`released_key` maps this
library's (readable) parameter names to them. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ConfigError, HymbaConfig

if TYPE_CHECKING:
    from .model import HymbaForCausalLM

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, malformed or does not fit the config."""


# (this library's name pattern, released name) for per-layer parameters, tried in order.
_LAYER_RENAMES = [
    (r"mixer\.attn_norm\.", "mamba.pre_avg_layernorm1."),
    (r"mixer\.ssm_norm\.", "mamba.pre_avg_layernorm2."),
    (r"mixer\.ssm\.x_proj\.", "mamba.x_proj.0."),
    (r"mixer\.ssm\.dt_proj\.", "mamba.dt_proj.0."),
    (r"mixer\.ssm\.A_log$", "mamba.A_log.0"),
    (r"mixer\.ssm\.D$", "mamba.D.0"),
    (r"mixer\.ssm\.", "mamba."),
    (r"mixer\.", "mamba."),
    (r"pre_mlp_layernorm\.", "pre_moe_layernorm."),
    (r"mlp\.", "moe.experts.0."),
]
_LAYER_PREFIX = re.compile(r"^(model\.layers\.\d+\.)(.*)$")


def released_key(name: str) -> str:
    """Map a parameter name of :class:`HymbaForCausalLM` to the released state-dict key."""
    match = _LAYER_PREFIX.match(name)
    if not match:
        return name
    prefix, rest = match.groups()
    for pattern, replacement in _LAYER_RENAMES:
        new, count = re.subn("^" + pattern, replacement, rest)
        if count:
            return prefix + new
    return name


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot parse size {size!r}; use e.g. '5GB' or a byte count")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    return int(number * scale[unit])


def _dtype(dtype: torch.dtype | str | None, config: HymbaConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype if dtype not in (None, "auto") else (config.torch_dtype or "float32")
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    value = getattr(torch, aliases.get(name, name), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return value


# --------------------------------------------------------------------------------------------
# Reading


def _weight_files(folder: str) -> list[str]:
    single = os.path.join(folder, WEIGHTS_NAME)
    index = os.path.join(folder, INDEX_NAME)
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as fh:
                weight_map = json.load(fh)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise CheckpointError(f"{index} names shard files that do not exist: {missing}")
        return [os.path.join(folder, f) for f in files]
    pickles = [n for n in PICKLE_NAMES if os.path.exists(os.path.join(folder, n))]
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); hymba loads safetensors "
            "only and never unpickles files. Convert them with a trusted tool first."
        )
    if os.path.isfile(os.path.join(folder, "sharded", ".metadata")):
        raise CheckpointError(f"{folder} is a sharded training checkpoint (an FSDP run's); write it in "
                              f"the released format first: hymba export --from {folder} --out DIR")
    raise CheckpointError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {folder}")


def _read_tensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        try:
            with safe_open(path, framework="pt") as fh:
                for key in fh.keys():
                    yield key, fh.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read {path} (truncated or not safetensors?): {exc}") from None


def _read_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as fh:
                for key in fh.keys():
                    shapes[key] = tuple(fh.get_slice(key).get_shape())
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read {path} (truncated or not safetensors?): {exc}") from None
    return shapes


def load_pretrained(
    cls: type[HymbaForCausalLM],
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
) -> HymbaForCausalLM:
    """``path``: a checkpoint folder or a hub id (see :func:`hymba.hub.resolve_model_dir`, which
    the keyword arguments are passed to)."""
    from .hub import resolve_model_dir

    folder = os.fspath(resolve_model_dir(path, revision=revision, cache_dir=cache_dir, token=token,
                                         local_files_only=local_files_only))
    try:
        config = HymbaConfig.load(folder)
    except ConfigError as exc:
        raise CheckpointError(f"bad config in {folder}: {exc}") from None
    files = _weight_files(folder)
    target_dtype = _dtype(dtype, config)
    device = torch.device(device or "cpu")

    with torch.device("meta"):
        model = cls(config)
    expected = {released_key(n): p for n, p in model.state_dict().items()}
    tied = config.tie_word_embeddings
    if tied:
        expected.pop("lm_head.weight", None)
    shapes = _read_shapes(files)
    found = {k: s for k, s in shapes.items() if not (tied and k == "lm_head.weight")}
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing[:20])}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:20])}")
    wrong = [
        f"{k}: file {found[k]} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(found) & set(expected))
        if tuple(found[k]) != tuple(expected[k].shape)
    ]
    if wrong:
        problems.append(f"mis-shaped tensors ({len(wrong)}): " + "; ".join(wrong[:20]))
    if problems:
        raise CheckpointError(f"checkpoint {folder} does not match its config:\n  " + "\n  ".join(problems))

    model.to_empty(device=device)
    model.to(target_dtype)
    model.tie_weights()
    by_key = {released_key(n): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for key, tensor in _read_tensors(files):
            if key not in expected:
                continue  # the tied lm_head copy
            target = by_key[key]
            if target.is_floating_point() and not tensor.is_floating_point():
                stored = str(tensor.dtype).removeprefix("torch.")
                wanted = str(target.dtype).removeprefix("torch.")
                raise CheckpointError(f"tensor {key} in {folder} is stored as {stored}, expected a "
                                      f"floating-point dtype (loading as {wanted})")
            if not torch.isfinite(tensor).all():
                raise CheckpointError(f"tensor {key} in {folder} contains NaN or inf")
            target.copy_(tensor.to(target.dtype))
    return model.eval()


# --------------------------------------------------------------------------------------------
# Writing


def _atomic_save(tensors: dict[str, torch.Tensor], path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb"):  # created as open() creates files: mode 0666 less the user's umask
        pass
    mode = os.stat(tmp).st_mode & 0o777
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.chmod(tmp, mode)  # safetensors leaves its file 0600
    os.replace(tmp, path)


def save_pretrained(model: HymbaForCausalLM, path: str | os.PathLike, max_shard_size: int | str = "5GB") -> None:
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    limit = _parse_size(max_shard_size)
    tied = model.config.tie_word_embeddings
    tensors = {}
    for name, tensor in model.state_dict().items():
        key = released_key(name)
        if tied and key == "lm_head.weight":
            continue
        tensors[key] = tensor.detach().to("cpu").contiguous().clone()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    written = set()
    if len(shards) == 1:
        _atomic_save(shards[0], os.path.join(folder, WEIGHTS_NAME))
        written.add(WEIGHTS_NAME)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            _atomic_save(shard, os.path.join(folder, name))
            written.add(name)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        tmp = os.path.join(folder, INDEX_NAME + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(index, fh, indent=2)
        os.replace(tmp, os.path.join(folder, INDEX_NAME))
        written.add(INDEX_NAME)
    # Drop weight files of an earlier save with a different sharding.
    for name in os.listdir(folder):
        stale = name == INDEX_NAME or re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", name)
        if stale and name not in written:
            os.remove(os.path.join(folder, name))
    dtype = str(model.dtype).removeprefix("torch.")
    model.config.replace(torch_dtype=dtype).save(folder)
