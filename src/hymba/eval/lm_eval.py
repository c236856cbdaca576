"""The ``hymba`` model for EleutherAI's lm-evaluation-harness.

After ``pip install 'hymba[eval]'``::

    lm_eval --model hymba --model_args pretrained=DIR,dtype=bfloat16 --tasks hellaswag --batch_size 16

lm-eval finds the name through the import hook installed with this package (``_hymba_lm_eval``,
loaded by ``hymba-lm-eval.pth``), or through :func:`register` when called from Python. All three
request types are batched with left padding: ``loglikelihood`` and ``loglikelihood_rolling`` go
through :func:`~hymba.eval.scoring.score_pairs`, ``generate_until`` through
:meth:`HymbaForCausalLM.generate <hymba.HymbaForCausalLM.generate>` (prefill, then cached decoding).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from ..devices import resolve_device
from ..model import HymbaForCausalLM, InputError
from ..tokenizer import load_tokenizer
from .scoring import left_pad, score_pairs

MODEL_NAME = "hymba"

logger = logging.getLogger(__name__)


def _device(name: str | None) -> torch.device:
    """The device to run on. The ``lm_eval`` command passes ``cuda:0`` when ``--device`` is not
    given, so a CUDA device on a machine without CUDA means the CPU (with a warning), as
    lm-eval's transformers adapter does; other unusable devices are an :class:`InputError`."""
    if name is not None and str(name).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("device %s requested but CUDA is not available: running on the CPU", name)
        return torch.device("cpu")
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _batch_size(value: Any) -> int:
    """lm-eval passes ``--batch_size`` as an int or a string (``"8"``, ``"auto"``, ``"auto:4"``);
    'auto' has no probing here and means the default of 8."""
    if value is None or str(value).startswith("auto"):
        return 8
    size = int(value)
    if size < 1:
        raise InputError(f"batch_size must be >= 1, got {value}")
    return size


class HymbaLM(TemplateLM):
    """lm-eval adapter around :class:`~hymba.HymbaForCausalLM` and its checkpoint's tokenizer.

    ``model_args``: ``pretrained`` (checkpoint folder), ``dtype`` (float32/bfloat16/float16,
    default: the checkpoint's), ``device`` (default cuda if available; a CUDA device on a machine
    without CUDA falls back to the CPU), ``batch_size``,
    ``max_length`` (tokens per forward; default the config's ``max_position_embeddings``),
    ``max_gen_toks`` (default 256), ``add_bos_token`` (default: the tokenizer's setting).
    """

    def __init__(
        self,
        pretrained: str,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str | None = 8,
        max_batch_size: int | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        add_bos_token: bool | None = None,
    ) -> None:
        super().__init__()
        device = _device(device)
        dtype = None if dtype in (None, "auto") else dtype
        self.model = HymbaForCausalLM.from_pretrained(pretrained, dtype=dtype, device=device).eval()
        self.hymba_tokenizer = load_tokenizer(pretrained)
        if add_bos_token is not None:
            self.hymba_tokenizer.add_bos_token = bool(add_bos_token)
        self._device = device
        self._batch_size = _batch_size(batch_size)
        if max_batch_size is not None:
            self._batch_size = min(self._batch_size, int(max_batch_size))
        self._max_length = int(max_length or self.model.config.max_position_embeddings)
        self._max_gen_toks = int(max_gen_toks)
        eos = self.hymba_tokenizer.eos_token_id
        if eos is None:
            raise InputError(f"the tokenizer in {pretrained} has no EOS token")
        self._eos = eos
        pad = self.hymba_tokenizer.pad_token_id
        self._pad = eos if pad is None else pad
        self.pretrained = str(pretrained)

    # -- properties lm-eval reads -----------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self._eos

    @property
    def prefix_token_id(self) -> int:
        bos = self.hymba_tokenizer.bos_token_id
        return self._eos if bos is None else bos

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.rstrip("/").replace("/", "__")

    # -- tokenization ----------------------------------------------------------------------
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids; ``add_special_tokens=None`` follows the tokenizer's BOS setting."""
        return self.hymba_tokenizer.encode(string, add_bos=add_special_tokens)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.hymba_tokenizer.decode(tokens)

    # -- requests --------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(context, continuation) for _, context, continuation in requests]
        scores = score_pairs(self.model, pairs, self.batch_size, self._pad, self.max_length,
                             progress=not disable_tqdm)
        results = []
        for (cache_key, _, _), score in zip(requests, scores):
            answer = (score.logprob, score.is_greedy)
            if cache_key is not None:
                self.cache_hook.add_partial("loglikelihood", cache_key, answer)
            results.append(answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents, split into disjoint windows of ``max_length``
        tokens (the first predicted from the prefix token), all windows batched together."""
        pairs, owner = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(text, add_special_tokens=False),
                prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1,
            )
            for context, continuation in map(make_disjoint_window, windows):
                pairs.append((context, continuation))
                owner.append(i)
        scores = score_pairs(self.model, pairs, self.batch_size, self._pad, self.max_length,
                             progress=not disable_tqdm)
        totals = [0.0] * len(requests)
        for i, score in zip(owner, scores):
            totals[i] += score.logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations (greedy unless ``do_sample``), batched by identical generation
        settings, longest prompts first, each cut at its first stop string."""
        eos_text = self.tok_decode([self._eos]) or None
        groups: dict[str, list[int]] = {}
        settings = []
        for i, request in enumerate(requests):
            kwargs = dict(normalize_gen_kwargs(dict(request.args[1]), self.max_gen_toks))
            kwargs["until"] = handle_stop_sequences(kwargs.get("until"), eos_text)
            settings.append(kwargs)
            groups.setdefault(repr(sorted(kwargs.items())), []).append(i)
        results: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for indices in groups.values():
            kwargs = settings[indices[0]]
            budget = max(1, self.max_length - kwargs["max_gen_toks"])
            prompts = {i: self.tok_encode(requests[i].args[0])[-budget:] for i in indices}
            order = sorted(indices, key=lambda i: -len(prompts[i]))
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for i, text in zip(batch, self._generate([prompts[i] for i in batch], kwargs)):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return results

    def _generate(self, prompts: list[list[int]], kwargs: dict) -> list[str]:
        ids, mask = left_pad(prompts, self._pad, self.device)
        sample = {k: kwargs[k] for k in ("temperature", "top_k", "top_p") if kwargs.get(k) is not None}
        out = self.model.generate(
            ids, attention_mask=mask, max_new_tokens=kwargs["max_gen_toks"],
            do_sample=bool(kwargs.get("do_sample")), **(sample if kwargs.get("do_sample") else {}),
            eos_token_id=self._eos, pad_token_id=self._pad, stop_strings=kwargs["until"],
            tokenizer=self.hymba_tokenizer,
        )
        texts = []
        for row in out[:, ids.shape[1]:].tolist():
            if self._eos in row:  # later positions hold padding
                row = row[: row.index(self._eos)]
            texts.append(cut_at_stop(self.tok_decode(row), kwargs["until"]))
        return texts


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to its earliest stop string."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


def register() -> None:
    """Make ``--model hymba`` resolve to :class:`HymbaLM` (idempotent)."""
    import lm_eval.models  # noqa: F401  (lm-eval's own table first: it only loads into an empty registry)

    model_registry.register(MODEL_NAME)(HymbaLM)  # also upgrades the import hook's lazy entry


register()
