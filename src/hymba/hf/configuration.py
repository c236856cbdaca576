"""``HymbaHFConfig``: the transformers ``PretrainedConfig`` of a Hymba checkpoint (``model_type
"hymba"``), a thin carrier of this library's :class:`~hymba.config.HymbaConfig`.

It reads and writes the released ``config.json`` fields unchanged: every field is kept as an
attribute, and :meth:`HymbaHFConfig.hymba_config` turns them back into a validated ``HymbaConfig``
(the only description of the model that :class:`~hymba.model.HymbaForCausalLM` knows).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from ..config import HymbaConfig

# Keys that transformers adds to every config's dict and that mean nothing to the model.
_TRANSFORMERS_KEYS = frozenset({
    "return_dict", "output_hidden_states", "output_attentions", "chunk_size_feed_forward",
    "is_encoder_decoder", "id2label", "label2id", "problem_type", "transformers_version",
    "_name_or_path", "name_or_path", "num_labels", "dtype", "use_cache",
})


class HymbaHFConfig(PretrainedConfig):
    """The configuration of :class:`~hymba.hf.HymbaHFForCausalLM` (released field names).

    The fields that transformers itself reads are declared here with the defaults of
    :class:`HymbaConfig`; all other released fields (``global_attn_idx``, ``kv_reuse_group``,
    ``num_memory_tokens``, the ``mamba_*`` sizes, ...) are kept as attributes as given.
    """

    model_type = "hymba"

    vocab_size: int = HymbaConfig.vocab_size
    hidden_size: int = HymbaConfig.hidden_size
    intermediate_size: int = HymbaConfig.intermediate_size
    num_hidden_layers: int = HymbaConfig.num_hidden_layers
    num_attention_heads: int = HymbaConfig.num_attention_heads
    num_key_value_heads: int = HymbaConfig.num_key_value_heads
    max_position_embeddings: int = HymbaConfig.max_position_embeddings
    rms_norm_eps: float = HymbaConfig.rms_norm_eps
    tie_word_embeddings: bool = HymbaConfig.tie_word_embeddings
    pad_token_id: int | None = HymbaConfig.pad_token_id
    bos_token_id: int | None = HymbaConfig.bos_token_id
    eos_token_id: int | None = HymbaConfig.eos_token_id
    # hymba always decodes with its own hybrid cache; the released config says false
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        # The released config's attn_implementation ("flex") names the reference code's attention
        # kernels, not one of transformers' attention interfaces (which hymba does not use): it is
        # kept under another name and written back by hymba_config().
        released = kwargs.pop("attn_implementation", None)
        super().__post_init__(**kwargs)
        if released is not None:
            self.hymba_attn_implementation = released

    @classmethod
    def from_hymba_config(cls, config: HymbaConfig, **kwargs: Any) -> HymbaHFConfig:
        """The transformers config of a ``HymbaConfig`` (same fields and values)."""
        data = config.to_dict()
        data.pop("model_type", None)
        return cls.from_dict({**data, **kwargs})

    def hymba_config(self) -> HymbaConfig:
        """This config as a validated :class:`HymbaConfig` (raises ``ConfigError`` if invalid)."""
        full = self.to_dict()
        data = {k: v for k, v in full.items() if k not in _TRANSFORMERS_KEYS}
        if "hymba_attn_implementation" in data:
            data["attn_implementation"] = data.pop("hymba_attn_implementation")
        dtype = full.get("dtype")
        if dtype is not None:
            data["torch_dtype"] = str(dtype).removeprefix("torch.")
        return HymbaConfig.from_dict(data)
