"""Helpers shared by the subcommands: choosing a model by preset or folder, devices, dtypes."""

from __future__ import annotations

import argparse
import os

from . import CLIError

# --model everywhere: a folder, or a hub id fetched into (or, with HF_HUB_OFFLINE=1, read from)
# the Hugging Face cache; see hymba.hub.
MODEL_HELP = ("checkpoint folder (config.json, safetensors, tokenizer.json) or a Hugging Face hub id "
              "such as nvidia/Hymba-1.5B-Base (fetched into the hub cache; HF_HUB_OFFLINE=1: cache only)")


def model_dir(args: argparse.Namespace, weights: bool = True) -> str:
    """The folder of ``--model``: the folder itself, or the hub id's snapshot in the hub cache
    (``weights=False``: its configs and tokenizer only)."""
    from ..hub import resolve_model_dir

    return str(resolve_model_dir(args.model, weights=weights))


def add_model_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--model", metavar="DIR|ID", help=MODEL_HELP + " (default: none, use --preset)")
    group.add_argument("--preset", metavar="NAME",
                       help="a built-in shape with random weights: hymba-1.5b, hymba-350m, hymba-125m, "
                            "tiny (default: tiny when --model is not given)")


def add_runtime_args(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--device`` and (unless ``dtype`` is False) ``--dtype``, with the same meaning everywhere."""
    if dtype:
        parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"), default=None,
                            help="compute dtype (default: the checkpoint's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")


def add_quantize_arg(parser: argparse.ArgumentParser) -> None:
    """``--quantize``, read by :func:`load_model`: weight-only quantization for inference."""
    parser.add_argument("--quantize", choices=("int8", "int4"), default=None,
                        help="quantize the decoder layers' linear weights after loading (torchao: "
                             "pip install 'hymba[quant]'); int4 on CUDA computes in bfloat16 "
                             "(default: none)")


def check_model_folder(path: str) -> None:
    """Fail with a pointer to the right path when ``--model`` names a file, a missing folder or a
    ``hymba train`` run folder (whose model is in ``final/`` or a ``checkpoint-N/``). A hub id
    (``owner/name`` that is no local path) passes: the hub resolves it."""
    from ..hub import is_hub_id

    if not os.path.exists(path) and is_hub_id(path):
        return
    if os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        raise CLIError(f"--model {path} is a file; pass the checkpoint folder that holds it: {folder}")
    if not os.path.isdir(path):
        raise CLIError(f"model folder {path} does not exist")
    if os.path.isfile(os.path.join(path, "config.json")):
        return
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        raise CLIError(f"{path} holds a LoRA adapter, not a model; merge it into its base first: "
                       f"hymba merge-lora --adapter {path} --out MERGED")
    candidates = [name for name in os.listdir(path)
                  if os.path.isfile(os.path.join(path, name, "config.json"))
                  and (name == "final" or name.startswith("checkpoint-"))]
    if candidates:
        checkpoints = sorted(n for n in candidates if n != "final")
        choices = [os.path.join(path, n) for n in (["final"] if "final" in candidates else [])
                   + checkpoints[-1:]]
        what = " or ".join(f"{c}{' (the latest checkpoint)' if 'checkpoint-' in c else ''}" for c in choices)
        raise CLIError(f"{path} is a training run folder, not a checkpoint; use {what}")


def load_config(args: argparse.Namespace):
    from ..config import HymbaConfig

    if getattr(args, "model", None):
        check_model_folder(args.model)
        return HymbaConfig.load(model_dir(args, weights=False))
    return HymbaConfig.from_preset(getattr(args, "preset", None) or "tiny")


def load_model(args: argparse.Namespace):
    """The model named by ``--model`` (weights) or ``--preset`` (random init), quantized if the
    command has ``--quantize`` (:func:`add_quantize_arg`) and it is given."""
    import torch

    from ..model import HymbaForCausalLM
    from ..model.quantize import quantize

    device = resolve_device(getattr(args, "device", None))
    dtype = getattr(args, "dtype", None)
    mode = getattr(args, "quantize", None)
    if getattr(args, "model", None):
        check_model_folder(args.model)
        return HymbaForCausalLM.from_pretrained(model_dir(args), dtype=dtype, device=device, quantize=mode)
    config = load_config(args)
    torch.manual_seed(getattr(args, "seed", 0) or 0)
    model = HymbaForCausalLM(config).to(device).eval()
    return model if mode is None else quantize(model, mode)


def resolve_device(name: str | None) -> str:
    from ..devices import resolve_device as resolve

    try:
        return str(resolve(name))
    except ValueError as exc:
        raise CLIError(f"--{exc}") from None  # "--device 'foo' is not a device; ..."


def require_plots(args: argparse.Namespace) -> None:
    """Fail early, before any work, when plots are asked for and matplotlib is missing."""
    if args.no_plots:
        return
    from ..eval.plots import require_matplotlib

    try:
        require_matplotlib()
    except ImportError as exc:
        raise CLIError(f"{exc}; or pass --no-plots") from None


def check_output_file(path: str | None, flag: str = "--json") -> None:
    """Fail before any work when an output file named by ``flag`` cannot be written."""
    if path is None:
        return
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path} is a folder; name a file")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise CLIError(f"{flag} {path} is not writable")
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CLIError(f"{flag} {path}: the folder {folder} is not writable")
