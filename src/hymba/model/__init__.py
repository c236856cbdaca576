"""Model modules: the hybrid block, its attention and SSM branches, and the causal LM."""

from .hymba import CausalLMOutput, HymbaForCausalLM, HymbaModel, count_parameters
from .layout import InputError

__all__ = ["CausalLMOutput", "HymbaForCausalLM", "HymbaModel", "InputError", "count_parameters"]
