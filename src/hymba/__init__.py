"""hymba: NVIDIA's Hymba hybrid-head small language models in pure PyTorch.

The public names below are imported on first use (module ``__getattr__``), so that ``import
hymba`` and the ``hymba`` command's ``--help`` and ``--version`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "CheckpointError": "checkpoint",
    "PRESETS": "config",
    "ConfigError": "config",
    "HymbaConfig": "config",
    "LayerSpec": "config",
    "CausalLMOutput": "model",
    "HymbaForCausalLM": "model",
    "InputError": "model",
    "count_parameters": "model",
    "HymbaTokenizer": "tokenizer",
    "TokenizerError": "tokenizer",
    "load_tokenizer": "tokenizer",
    "quantize": "model.quantize",
}

# transformers Auto classes for model_type "hymba" (hymba.hf), registered when transformers is
# imported; transformers itself is not imported here.
from ._hf_hook import install as _install_hf_hook  # noqa: E402

_install_hf_hook()

__all__ = [
    "PRESETS",
    "CausalLMOutput",
    "CheckpointError",
    "ConfigError",
    "HymbaConfig",
    "HymbaForCausalLM",
    "HymbaTokenizer",
    "InputError",
    "LayerSpec",
    "TokenizerError",
    "count_parameters",
    "load_tokenizer",
    "quantize",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs
    from .checkpoint import CheckpointError
    from .config import PRESETS, ConfigError, HymbaConfig, LayerSpec
    from .model import CausalLMOutput, HymbaForCausalLM, InputError, count_parameters
    from .model.quantize import quantize
    from .tokenizer import HymbaTokenizer, TokenizerError, load_tokenizer
