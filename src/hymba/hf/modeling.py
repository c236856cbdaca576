"""``HymbaHFForCausalLM``: a transformers ``PreTrainedModel`` + ``GenerationMixin`` around
:class:`hymba.HymbaForCausalLM`, so that ``AutoModelForCausalLM`` and ``pipeline`` load Hymba
checkpoints with this library's code, without remote code.

The wrapper holds one :class:`~hymba.HymbaForCausalLM` (submodule ``hymba``) and uses only its
public API: the forward pass, ``generate`` and ``from_pretrained``/``save_pretrained``. Weights are
read and written by this library's checkpoint code, in the released format (same file, same
tensor names), never by transformers' loader.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..checkpoint import CheckpointError
from ..model import HymbaForCausalLM
from .configuration import HymbaHFConfig

# Generation settings translated to hymba's decoding loop (see HymbaHFForCausalLM.generate).
_SUPPORTED = frozenset({
    "max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p",
    "repetition_penalty", "eos_token_id", "pad_token_id", "stop_strings",
    "return_dict_in_generate", "output_logits",
})
# Settings with no effect here: token ids for other model kinds, cache choices (hymba always
# decodes through its hybrid cache), compilation, and bookkeeping.
_IGNORED = frozenset({
    "bos_token_id", "decoder_start_token_id", "use_cache", "cache_implementation", "cache_config",
    "compile_config", "disable_compile", "transformers_version", "_from_model_config",
    "low_memory", "max_cache_len",
})
# from_pretrained arguments that transformers' Auto classes and pipeline pass along: ignored
# whatever their value (markers, and choices hymba makes itself), or accepted at their default.
# adapter_kwargs: the hub options transformers passes along for an adapter lookup (with PEFT
# installed); an adapter found in the folder is loaded by transformers itself, not here
_LOAD_IGNORED = frozenset({"_from_auto", "_from_pipeline", "_commit_hash", "code_revision", "adapter_kwargs",
                           "attn_implementation", "experts_implementation", "low_cpu_mem_usage"})
_LOAD_DEFAULTS = {
    "force_download": False, "subfolder": "", "output_loading_info": False,
    "use_kernels": False, "weights_only": True, "key_mapping": None, "tp_plan": None,
    "device_mesh": None, "quantization_config": None, "proxies": None,
}


class HymbaHFForCausalLM(PreTrainedModel, GenerationMixin):
    """Hymba for transformers: ``AutoModelForCausalLM.from_pretrained(folder_or_hub_id)``,
    ``pipeline("text-generation", model=...)``, ``model(input_ids, attention_mask).logits`` and
    ``model.generate(...)`` (hymba's hybrid cache; see :meth:`generate`).

    ``attention_mask`` may left-pad rows (1 = token, 0 = padding), as hymba's own forward.
    """

    config_class = HymbaHFConfig
    base_model_prefix = "hymba"
    main_input_name = "input_ids"
    _no_split_modules = ["HymbaBlock"]
    # transformers' attention choice does not apply (hymba picks its own kernels): accept its
    # names rather than fail on them
    _supports_flex_attn = True
    _supports_sdpa = True

    def __init__(self, config: HymbaHFConfig, hymba_model: HymbaForCausalLM | None = None) -> None:
        super().__init__(config)
        self.hymba = hymba_model if hymba_model is not None else HymbaForCausalLM(config.hymba_config())
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: hymba's modules initialise themselves (and loading overwrites them)."""

    # ------------------------------------------------------------------------------------------
    # Loading and saving: through hymba's checkpoint code (released format, safetensors only)
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        config: HymbaHFConfig | None = None,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device_map: str | int | torch.device | dict | None = None,
        trust_remote_code: bool | None = None,
        use_safetensors: bool | None = None,
        **kwargs: Any,
    ) -> HymbaHFForCausalLM:
        """Load a released-format folder or hub id with hymba's loader.

        ``dtype`` (or ``torch_dtype``; ``"auto"``/None: the checkpoint's), ``device_map`` (None,
        ``"auto"``, a device, or a dict that puts everything on one device), ``revision``,
        ``cache_dir``, ``token`` and ``local_files_only`` are honoured. ``trust_remote_code`` is
        ignored: the checkpoint's ``auto_map`` is never used. Only safetensors weights load.
        """
        from ..hub import resolve_model_dir

        if model_args:
            raise TypeError("HymbaHFForCausalLM.from_pretrained takes no positional model arguments")
        if use_safetensors is False:
            raise ValueError("hymba loads safetensors weights only (use_safetensors=False is not supported)")
        # with PEFT installed, the Auto classes pass the hub settings again here, and for a PEFT
        # adapter folder (its adapter_config.json names the base) the adapter's path
        adapter_kwargs = dict(kwargs.pop("adapter_kwargs", None) or {})
        adapter_path = adapter_kwargs.pop("_adapter_model_path", None)
        adapter_kwargs = {k: v for k, v in adapter_kwargs.items() if v is not None}
        if set(adapter_kwargs) - {"revision", "token"}:
            raise TypeError("HymbaHFForCausalLM.from_pretrained does not support adapter_kwargs "
                            f"{', '.join(sorted(set(adapter_kwargs) - {'revision', 'token'}))}")
        unsupported = sorted(k for k, v in kwargs.items() if k not in _LOAD_IGNORED and not (
            k in _LOAD_DEFAULTS and (v is None or v == _LOAD_DEFAULTS[k] or v == {})))
        if unsupported:
            raise TypeError(f"HymbaHFForCausalLM.from_pretrained does not support {', '.join(unsupported)}")
        folder = resolve_model_dir(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                   token=token, local_files_only=local_files_only)
        dtype = dtype if dtype is not None else torch_dtype
        inner = HymbaForCausalLM.from_pretrained(folder, dtype=None if dtype == "auto" else dtype,
                                                 device=_single_device(device_map))
        if config is None:
            config = HymbaHFConfig.from_hymba_config(inner.config)
        elif config.hymba_config().replace(torch_dtype=None, extra={}) != inner.config.replace(torch_dtype=None, extra={}):
            raise CheckpointError(f"the config passed differs from {folder}/config.json: hymba loads the "
                                  "checkpoint's own config (edit it there, or build the model from a config)")
        config._name_or_path = str(pretrained_model_name_or_path)
        config.dtype = inner.dtype
        model = cls(config, hymba_model=inner)
        if adapter_path is not None:  # transformers' PEFT integration adds the adapter
            model.load_adapter(str(adapter_path), adapter_kwargs=adapter_kwargs or None)
        generation_file = os.path.join(folder, "generation_config.json")
        if os.path.isfile(generation_file):
            model.generation_config = GenerationConfig.from_pretrained(folder)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, *, is_main_process: bool = True,
                        max_shard_size: int | str = "5GB", safe_serialization: bool = True,
                        push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write the released format (``config.json`` + safetensors, hymba's tensor names) and
        ``generation_config.json``; other transformers saving options are refused (upload a
        saved folder with ``huggingface_hub`` instead of ``push_to_hub``)."""
        if not safe_serialization:
            raise ValueError("hymba writes safetensors only (safe_serialization=False is not supported)")
        refused = sorted(k for k, v in kwargs.items() if v is not None) + (["push_to_hub"] if push_to_hub else [])
        if refused:
            raise TypeError(f"HymbaHFForCausalLM.save_pretrained does not support {', '.join(refused)}")
        if not is_main_process:
            return
        self.hymba.save_pretrained(save_directory, max_shard_size=max_shard_size)
        if self.generation_config is not None:
            self.generation_config.save_pretrained(save_directory)

    # ------------------------------------------------------------------------------------------
    # Activation checkpointing (transformers' Trainer, activation_checkpointing=True): hymba's
    # own, one non-reentrant torch.utils.checkpoint per decoder layer
    supports_gradient_checkpointing = True

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """Checkpoint every decoder layer (non-reentrant: frozen inputs need no gradient, so
        PEFT adapters train without ``enable_input_require_grads``). Other choices are refused."""
        options = dict(activation_checkpointing_kwargs or {})
        if options.pop("use_reentrant", False) or options or every_n_layers != 1 or offload:
            raise ValueError("hymba checkpoints every decoder layer, non-reentrantly: use_reentrant=True, "
                             "other checkpoint arguments, every_n_layers and offload are not supported")
        self.hymba.gradient_checkpointing_enable(True)

    def activation_checkpointing_disable(self) -> None:
        self.hymba.gradient_checkpointing_enable(False)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """The older name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.hymba.model.embed_tokens

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.hymba.lm_head

    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """hymba's forward: float32 logits for every position (or the last ``logits_to_keep``),
        the next-token loss for ``labels`` (-100 = ignore; with ``num_items_in_batch``, as
        transformers' Trainer passes it, the summed loss divided by it). There is no transformers cache
        (``past_key_values``): incremental decoding goes through :meth:`generate`."""
        if past_key_values is not None or inputs_embeds is not None:
            raise ValueError("HymbaHFForCausalLM takes input_ids only (no past_key_values or inputs_embeds); "
                             "generate() decodes with hymba's own hybrid cache")
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        unknown = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unknown:
            raise TypeError(f"HymbaHFForCausalLM.forward does not support {', '.join(unknown)}")
        options = {}
        if labels is not None:
            options["labels"] = labels
        if output_hidden_states:
            options["output_hidden_states"] = True
        if logits_to_keep:
            options["logits_to_keep"] = logits_to_keep
        out = self.hymba(input_ids, attention_mask, **options)
        loss = out.loss
        if labels is not None and num_items_in_batch is not None:
            # transformers' Trainer under gradient accumulation: the summed token loss over the
            # number of target tokens in the whole accumulated batch
            loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(out.logits.device),
                                   ignore_index=-100, reduction="sum") / num_items_in_batch
        result = CausalLMOutputWithPast(loss=loss, logits=out.logits, hidden_states=out.hidden_states)
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return result if use_dict else result.to_tuple()

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: Any = None,
        stopping_criteria: Any = None,
        prefix_allowed_tokens_fn: Any = None,
        synced_gpus: bool | None = None,
        assistant_model: Any = None,
        streamer: Any = None,
        negative_prompt_ids: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        custom_generate: Any = None,
        **kwargs: Any,
    ) -> torch.LongTensor | GenerateDecoderOnlyOutput:
        """transformers' ``generate`` run by hymba's decoding loop and hybrid cache.

        Supported (from ``generation_config``, the model's ``generation_config`` and keyword
        arguments, merged as transformers merges them): ``max_new_tokens`` / ``max_length``,
        greedy or ``do_sample`` with ``temperature``, ``top_k``, ``top_p``,
        ``repetition_penalty`` (on the prompt's real tokens and the new ones), ``eos_token_id``
        (an id or a list), ``pad_token_id`` (default: the first EOS), ``stop_strings`` (with
        ``tokenizer=``), ``attention_mask`` (left padding), ``return_dict_in_generate`` and
        ``output_logits``. Sampling draws its seed from torch's global generator, so
        ``torch.manual_seed`` makes it repeatable.

        Anything else that changes decoding raises ``ValueError`` instead of being ignored:
        beam search (``num_beams`` > 1), ``num_return_sequences`` > 1, ``min_new_tokens`` /
        ``min_length``, ``output_scores``, other logits processors (``min_p``, ``typical_p``,
        ``no_repeat_ngram_size``, ``bad_words_ids``, ...), custom ``logits_processor`` /
        ``stopping_criteria``, ``streamer``, assisted or contrastive decoding,
        ``inputs_embeds`` and ``past_key_values``.

        Returns a LongTensor (batch, prompt + new tokens) or, with ``return_dict_in_generate``,
        a ``GenerateDecoderOnlyOutput`` (``sequences``, and ``logits`` with ``output_logits``).
        """
        extras = {"logits_processor": logits_processor, "stopping_criteria": stopping_criteria,
                  "prefix_allowed_tokens_fn": prefix_allowed_tokens_fn, "assistant_model": assistant_model,
                  "streamer": streamer, "negative_prompt_ids": negative_prompt_ids,
                  "negative_prompt_attention_mask": negative_prompt_attention_mask,
                  "custom_generate": custom_generate, "synced_gpus": synced_gpus or None}
        given = sorted(k for k, v in extras.items() if v is not None and not (isinstance(v, list) and len(v) == 0))
        if given:
            raise ValueError(f"hymba's generate does not support {', '.join(given)}")
        input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
        if input_ids is None:
            raise ValueError("generate needs input_ids (inputs_embeds are not supported)")
        attention_mask = kwargs.pop("attention_mask", None)
        tokenizer = kwargs.pop("tokenizer", None)
        for name in ("inputs_embeds", "past_key_values"):
            if kwargs.pop(name, None) is not None:
                raise ValueError(f"hymba's generate does not support {name}")
        config, rest = self._prepare_generation_config(generation_config, **kwargs)
        rest = sorted(k for k, v in rest.items() if v is not None and v is not False)
        if rest:
            raise ValueError(f"hymba's generate does not support {', '.join(rest)}")
        _check_supported(config)

        prompt_length = input_ids.shape[1]
        max_new = config.max_new_tokens
        if max_new is None:
            max_new = config.max_length - prompt_length
            if max_new <= 0:
                raise ValueError(f"max_length={config.max_length} leaves no room after the prompt of "
                                 f"{prompt_length} tokens; set max_new_tokens")
        eos = config.eos_token_id
        eos_list = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        pad = config.pad_token_id if config.pad_token_id is not None else (eos_list[0] if eos_list else None)
        keep_logits = bool(config.return_dict_in_generate and config.output_logits)
        seed = None
        if config.do_sample:  # from torch's global RNG: torch.manual_seed makes runs repeatable
            seed = int(torch.randint(0, 2**62, (1,)).item())
        out = self.hymba.generate(
            input_ids, attention_mask, max_new_tokens=max_new, do_sample=bool(config.do_sample),
            temperature=config.temperature, top_k=config.top_k or 0, top_p=config.top_p,
            repetition_penalty=config.repetition_penalty, seed=seed, eos_token_id=eos_list,
            pad_token_id=pad, stop_strings=config.stop_strings or None,
            tokenizer=tokenizer, output_logits=keep_logits,
        )
        if not config.return_dict_in_generate:
            return out
        if not keep_logits:
            return GenerateDecoderOnlyOutput(sequences=out)
        return GenerateDecoderOnlyOutput(sequences=out.sequences, logits=tuple(out.logits.unbind(1)))


def _check_supported(config: GenerationConfig) -> None:
    """Refuse settings hymba's decoding loop would not honour."""
    defaults = GenerationConfig._get_default_generation_params()
    problems = []
    for name, value in config.to_dict().items():
        if name in _SUPPORTED or name in _IGNORED or value is None:
            continue
        default = defaults.get(name, None)
        if value is False and not default:  # a flag left off (a config without generation_config.json
            continue  # carries output_attentions=False from the model config)
        if value != default and value not in ({}, []):
            problems.append(f"{name}={value!r}")
    if problems:
        raise ValueError(f"hymba's generate does not support {', '.join(problems)} (supported: "
                         f"{', '.join(sorted(_SUPPORTED))}, attention_mask)")


def _single_device(device_map: str | int | torch.device | dict | None) -> torch.device | str | None:
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        places = set(device_map.values())
        if len(places) != 1:
            raise ValueError("hymba loads a model onto one device: a device_map that splits it is not supported")
        device_map = places.pop()
    if device_map == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return device_map
