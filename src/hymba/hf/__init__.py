"""Hymba in the transformers ecosystem (``pip install 'hymba[hf]'``, transformers >= 5).

Importing this package registers, for ``model_type: "hymba"``:

* :class:`HymbaHFConfig` with ``AutoConfig``;
* :class:`HymbaHFForCausalLM` with ``AutoModelForCausalLM``;
* ``PreTrainedTokenizerFast`` (built from ``tokenizer.json``) with ``AutoTokenizer``, for
  checkpoints whose ``tokenizer_config.json`` names no tokenizer class.

After that, ``AutoModelForCausalLM.from_pretrained(folder_or_hub_id)`` and
``pipeline("text-generation", model=...)`` run this library's code, without
``trust_remote_code``: a registered local class wins over a checkpoint's ``auto_map``.

``import hymba`` arranges this by itself (see :mod:`hymba._hf_hook`): it registers as soon as
transformers is imported, without importing transformers earlier.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError:
    raise ImportError("hymba.hf needs transformers >= 5: pip install 'hymba[hf]'") from None

from .configuration import HymbaHFConfig  # noqa: E402
from .modeling import HymbaHFForCausalLM  # noqa: E402

__all__ = ["HymbaHFConfig", "HymbaHFForCausalLM", "register"]


def register() -> None:
    """Register the Hymba classes with transformers' Auto classes (idempotent)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        PreTrainedTokenizerFast,
    )

    AutoConfig.register("hymba", HymbaHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(HymbaHFConfig, HymbaHFForCausalLM, exist_ok=True)
    AutoTokenizer.register(HymbaHFConfig, fast_tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)


register()
