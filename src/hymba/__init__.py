"""hymba: NVIDIA's Hymba hybrid-head small language models in pure PyTorch."""

from .checkpoint import CheckpointError
from .config import PRESETS, ConfigError, HymbaConfig, LayerSpec
from .model import CausalLMOutput, HymbaForCausalLM, InputError, count_parameters
from .tokenizer import HymbaTokenizer, TokenizerError, load_tokenizer

__version__ = "0.1.0"

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
]
