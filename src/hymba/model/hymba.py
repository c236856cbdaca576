"""HymbaForCausalLM: embeddings, meta tokens, the decoder layers, final norm and the tied head."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, HymbaConfig
from .block import HymbaBlock
from .layers import Linear, RMSNorm, RotaryEmbedding
from .layout import InputError, SequenceLayout, check_token_ids, left_padding, padded_layout
from .state import LayerState, SequenceState


@dataclass
class CausalLMOutput:
    logits: Tensor  # (b, n, vocab) float32, aligned with input_ids
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None  # per layer input, meta positions included


class HymbaModel(nn.Module):
    """The decoder stack; returns final-norm hidden states for the real tokens."""

    def __init__(self, config: HymbaConfig) -> None:
        super().__init__()
        self.config = config
        self.plan = config.layer_plan()
        self.num_meta = config.num_memory_tokens
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        if self.num_meta:
            self.memory_tokens = nn.Parameter(torch.randn(self.num_meta, config.hidden_size))
        self.layers = nn.ModuleList(HymbaBlock(config, spec) for spec in self.plan)
        self.final_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config) if config.has_attention and config.rope else None
        self.gradient_checkpointing = False

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, SequenceLayout, Tensor | None]:
        """Embeddings with the meta tokens placed in front of each row's real tokens.

        Returns ``(h, layout, output_index)``; ``output_index`` maps input positions to internal
        ones when rows are padded (else None: real tokens are the last n internal positions).
        """
        b, n = input_ids.shape
        h = self.embed_tokens(input_ids)
        m = self.num_meta
        pads = left_padding(attention_mask, input_ids)
        if m:
            h = torch.cat([self.memory_tokens.to(h.dtype).expand(b, m, -1), h], dim=1)
        if pads is None:
            positions = torch.arange(m + n, device=h.device)
            return h, SequenceLayout(positions, None, m, start=0), None
        source, positions, valid, output = padded_layout(pads, m, n)
        h = torch.gather(h, 1, source[..., None].expand(-1, -1, h.shape[-1]))
        return h, SequenceLayout(positions, valid, m), output

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
        state: SequenceState | None = None,
        num_new: Tensor | None = None,
        check_inputs: bool = True,
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """Final-norm hidden states (b, n, H) for the ``input_ids`` positions.

        Without ``state`` each row is a new sequence (meta tokens in front, ``attention_mask`` may
        left-pad rows). With ``state`` the ids continue the sequences it holds and are stored in
        it; rows may then be right-padded, ``num_new`` (b,) saying how many ids of each row are
        real. ``check_inputs=False`` skips the id range check, which reads the device (a decode
        loop feeding back sampled tokens needs no check, and must not wait for the device).
        """
        if state is None:
            if num_new is not None:
                raise InputError("num_new describes tokens added to a state: pass state= as well")
            if check_inputs:
                check_token_ids(input_ids, self.config.vocab_size)
            h, layout, output_index = self.embed(input_ids, attention_mask)
            hidden = [h] if output_hidden_states else None
            h = self.run_layers(h, layout, hidden)
            n = input_ids.shape[1]
            if output_index is None:
                h = h[:, -n:]
            else:
                h = torch.gather(h, 1, output_index[..., None].expand(-1, -1, h.shape[-1]))
            return h, (tuple(hidden) if hidden is not None else None)
        if attention_mask is not None:
            raise InputError("with a state, right-pad rows and pass num_new instead of attention_mask")
        if output_hidden_states:
            raise InputError("output_hidden_states is not available with a state")
        n = input_ids.shape[1] if isinstance(input_ids, Tensor) and input_ids.dim() == 2 else 0
        mask = None
        if num_new is not None:
            if not isinstance(num_new, Tensor) or num_new.dtype not in (torch.int64, torch.int32) \
                    or tuple(num_new.shape) != tuple(input_ids.shape[:1]):
                raise InputError(f"num_new must be an integer tensor of shape ({input_ids.shape[0]},): "
                                 "the real tokens of each row")
            num_new = num_new.to(input_ids.device, torch.int64)
            mask = torch.arange(n, device=input_ids.device)[None] < num_new[:, None]
            input_ids = torch.where(mask, input_ids, 0)  # what padding holds is never read
        if check_inputs:
            if num_new is not None:
                lo, hi = torch.stack(torch.aminmax(num_new)).tolist()
                if lo < 0 or hi > n:
                    raise InputError(f"num_new must be in [0, {n}] (the row length), got {lo if lo < 0 else hi}")
            check_token_ids(input_ids, self.config.vocab_size, mask)
        layout = state.layout(n, num_new)
        h = self.run_layers(self.embed_tokens(input_ids), layout)
        state.advance(n)
        return h, None

    def run_meta_tokens(self, state: LayerState) -> None:
        """Run the meta tokens alone, as the start of a sequence, through ``state``: what they
        leave behind (their K/V, the conv/SSM state after them) does not depend on the input."""
        m = self.num_meta
        if not m:
            return
        h = self.memory_tokens[None].to(self.embed_tokens.weight.dtype)
        self.run_layers(h, SequenceLayout(torch.arange(m, device=h.device), None, m, state=state, start=0))

    def run_layers(self, h: Tensor, layout: SequenceLayout, hidden: list[Tensor] | None = None) -> Tensor:
        """The decoder layers and the final norm over internal positions ``h`` (b, L, H)."""
        if self.rotary is not None:
            layout.cos, layout.sin = self.rotary(layout.positions, h.dtype)
        shared = {}
        for layer, spec in zip(self.layers, self.plan):
            kv_in = shared.get(spec.kv_source)
            if self.gradient_checkpointing and self.training:
                h, kv_out = torch.utils.checkpoint.checkpoint(layer, h, layout, kv_in, use_reentrant=False)
            else:
                h, kv_out = layer(h, layout, kv_in)
            if spec.kv_consumers:
                shared[spec.index] = kv_out
            if hidden is not None:
                hidden.append(h)
        h = self.final_layernorm(h)
        if hidden is not None:
            hidden[-1] = h
        return h


class HymbaForCausalLM(nn.Module):
    """Hymba language model with the HF-style API: ``model(input_ids).logits``, ``generate``,
    ``from_pretrained`` / ``save_pretrained``."""

    def __init__(self, config: HymbaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = HymbaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.quantization: str | None = None  # "int8" / "int4" once quantized (hymba.quantize)
        self.tie_weights()
        self.init_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the output head (``tie_word_embeddings``)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference initialisation (``hymba-architecture.md`` §6.3)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        for name, p in self.named_parameters():
            if name.endswith("A_log"):
                n = p.shape[-1]
                p.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand_as(p))
            elif name.endswith(".D"):
                p.fill_(1.0)
            elif name.endswith("memory_tokens"):
                p.normal_(0.0, 1.0)

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers, in order (one :class:`~hymba.model.block.HymbaBlock` each), for
        inspection and hooks."""
        return self.model.layers

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def num_parameters(self) -> int:
        """Unique parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        self.model.gradient_checkpointing = enabled

    # ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
        *,
        state: SequenceState | None = None,
        num_new: Tensor | None = None,
        check_inputs: bool = True,
    ) -> CausalLMOutput:
        """Logits for every input position (or the last ``logits_to_keep``), float32.

        ``attention_mask`` (1 = real token, 0 = padding) may left-pad rows: each row then gives
        the logits it would give alone. ``labels`` (−100 = ignore) yield the next-token loss.

        ``state`` (e.g. a :class:`hymba.inference.HybridCache`) continues the sequences it holds;
        rows may be right-padded with ``num_new`` (b,) real tokens each, and ``logits_to_keep=1``
        then keeps each row's last real token. See :meth:`HymbaModel.forward`.
        """
        if self.config.tie_word_embeddings and (type(self.lm_head) is not Linear
                                                or type(self.model.embed_tokens) is not nn.Embedding):
            # merging would change the shared matrix for both uses: not what was trained
            raise ConfigError("an adapter on lm_head or embed_tokens is not supported: the two share one "
                              "matrix (tie_word_embeddings)")
        h, hidden = self.model(input_ids, attention_mask, output_hidden_states, state=state, num_new=num_new,
                               check_inputs=check_inputs)
        if logits_to_keep == 1 and num_new is not None:
            last = (num_new.to(h.device) - 1).clamp(min=0)
            h = h[torch.arange(h.shape[0], device=h.device), last][:, None]
        elif logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h).float()
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise InputError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(logits=logits, loss=loss, hidden_states=hidden)

    def run_meta_tokens(self, state: LayerState) -> None:
        """Run the meta tokens alone through ``state`` (see :meth:`HymbaModel.run_meta_tokens`)."""
        self.model.run_meta_tokens(state)

    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs):
        """Generate continuations with the hybrid cache; see :func:`hymba.inference.generate`."""
        from ..inference.generation import generate

        return generate(self, input_ids, attention_mask, **kwargs)

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        quantize: str | None = None,
    ) -> HymbaForCausalLM:
        """Load a released-format folder (``config.json`` + ``model.safetensors`` or shards), or a
        hub id such as ``"nvidia/Hymba-1.5B-Base"`` through the Hugging Face cache: ``revision``,
        ``cache_dir``, ``token`` and ``local_files_only`` (default: ``HF_HUB_OFFLINE``) apply to
        hub ids; a local folder always wins. Only safetensors and JSON/tokenizer files are fetched.

        ``quantize="int8"`` or ``"int4"``: the decoder layers' linear weights quantized for
        inference after loading, on ``device`` (:func:`hymba.model.quantize.quantize`, through
        torchao: ``pip install 'hymba[quant]'``)."""
        from ..checkpoint import load_pretrained
        from .quantize import check_mode
        from .quantize import quantize as quantize_model

        if quantize is not None:
            check_mode(quantize)  # before any loading
        model = load_pretrained(cls, path, dtype=dtype, device=device, revision=revision,
                                cache_dir=cache_dir, token=token, local_files_only=local_files_only)
        return model if quantize is None else quantize_model(model, quantize)

    def save_pretrained(self, path: str | os.PathLike, max_shard_size: int | str = "5GB") -> None:
        """Write ``config.json`` + safetensors weights in the released format."""
        from ..checkpoint import CheckpointError, save_pretrained

        if self.quantization is not None:
            raise CheckpointError(f"a {self.quantization}-quantized model cannot be saved in the released "
                                  "format: save the model before quantizing it")

        save_pretrained(self, path, max_shard_size=max_shard_size)


def count_parameters(config: HymbaConfig) -> int:
    """Parameter count of a config without allocating weights."""
    with torch.device("meta"):
        model = HymbaForCausalLM.__new__(HymbaForCausalLM)
        nn.Module.__init__(model)
        model.config = config
        model.model = HymbaModel(config)
        total = sum(p.numel() for p in model.model.parameters())
    if not config.tie_word_embeddings:
        total += config.vocab_size * config.hidden_size
    return total


__all__ = ["HymbaForCausalLM", "HymbaModel", "CausalLMOutput", "count_parameters"]
