"""hymba: NVIDIA's Hymba hybrid-head small language models in pure PyTorch."""

from .checkpoint import CheckpointError
from .config import PRESETS, ConfigError, HymbaConfig, LayerSpec
from .model import CausalLMOutput, HymbaForCausalLM, InputError, count_parameters
from .model.quantize import quantize
from .tokenizer import HymbaTokenizer, TokenizerError, load_tokenizer

__version__ = "0.1.0"

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
