"""Tokenizer and chat template from a checkpoint folder, built on HF ``tokenizers``.

Reads ``tokenizer.json`` (fast tokenizer), ``tokenizer_config.json`` and
``special_tokens_map.json`` (special tokens, BOS flag, chat template).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer


class TokenizerError(ValueError):
    """A tokenizer folder is missing or malformed, or a text cannot be encoded."""


def check_utf8(text: str, what: str = "the text") -> None:
    """Raise :class:`TokenizerError` if ``text`` holds characters UTF-8 cannot encode: the lone
    surrogates Python makes of argv or stdin bytes that were not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenizerError(f"{what} is not valid UTF-8 (at character {exc.start})") from None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # HF AddedToken serialisation
        return value.get("content")
    return value


class HymbaTokenizer:
    """Text ↔ token ids, special tokens and chat template of one checkpoint."""

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = dict(config or {})
        self.bos_token = _token_text(self.config.get("bos_token"))
        self.eos_token = _token_text(self.config.get("eos_token"))
        self.pad_token = _token_text(self.config.get("pad_token"))
        self.add_bos_token = bool(self.config.get("add_bos_token", self.bos_token is not None))
        self.chat_template: str | None = self.config.get("chat_template")

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> HymbaTokenizer:
        folder = os.fspath(folder)
        config_path = os.path.join(folder, "tokenizer_config.json")
        config: dict[str, Any] = {}
        if os.path.isfile(config_path):
            try:
                with open(config_path, encoding="utf-8") as fh:
                    config = json.load(fh)
            except json.JSONDecodeError as exc:
                raise TokenizerError(f"{config_path} is not valid JSON: {exc}") from None
        special_map = os.path.join(folder, "special_tokens_map.json")
        if os.path.isfile(special_map):
            with open(special_map, encoding="utf-8") as fh:
                for key, value in json.load(fh).items():
                    config.setdefault(key, value)
        fast = os.path.join(folder, "tokenizer.json")
        if os.path.isfile(fast):
            try:
                tok = Tokenizer.from_file(fast)
            except Exception as exc:  # tokenizers raises a plain Exception on bad files
                raise TokenizerError(f"cannot read {fast}: {exc}") from None
        elif os.path.isfile(os.path.join(folder, "tokenizer.model")):
            raise TokenizerError(
                f"{folder} has a SentencePiece tokenizer.model but no tokenizer.json; add the "
                "checkpoint's tokenizer.json (the released Hymba repos ship one)"
            )
        else:
            raise TokenizerError(f"no tokenizer.json or tokenizer.model in {folder}")
        return cls(tok, config)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (special tokens, BOS flag, chat
        template) to ``folder``, creating it. Saving a model and its tokenizer to the same folder
        makes a checkpoint every ``hymba`` command and :func:`load_tokenizer` read."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        self.tokenizer.save(os.path.join(folder, "tokenizer.json"))
        config = dict(self.config)
        config.update(bos_token=self.bos_token, eos_token=self.eos_token, pad_token=self.pad_token,
                      add_bos_token=self.add_bos_token)
        if self.chat_template:
            config["chat_template"] = self.chat_template
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2, ensure_ascii=False)

    save = save_pretrained  # the earlier name

    # ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        pad = self.token_to_id(self.pad_token)
        return pad if pad is not None else self.eos_token_id

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; a BOS is prepended when the tokenizer asks for it (or
        ``add_bos=True``) unless the text already starts with one."""
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode text (str), got {type(text).__name__}")
        check_utf8(text)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos = self.bos_token_id
        if (self.add_bos_token if add_bos is None else add_bos) and bos is not None:
            if not ids or ids[0] != bos:
                ids = [bos, *ids]
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool | None = None) -> list[list[int]]:
        return [self.encode(t, add_bos) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render messages with the checkpoint's Jinja chat template (sandboxed)."""
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template (tokenizer_config.json)")
        text = _compiled_template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs,
        )
        return self.encode(text, add_bos=False) if tokenize else text


def _raise_template_error(message: str) -> None:
    raise TokenizerError(f"chat template error: {message}")


@functools.lru_cache(maxsize=8)
def _compiled_template(source: str):
    """A chat template compiled once in a sandboxed Jinja environment (rendering is then cheap)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_template_error
    return env.from_string(source)


def load_tokenizer(
    folder: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
) -> HymbaTokenizer:
    """The tokenizer of a checkpoint folder, or of a hub id such as ``"nvidia/Hymba-1.5B-Base"``
    (its tokenizer and config files only; see :func:`hymba.hub.resolve_model_dir`)."""
    from .hub import is_hub_id, resolve_model_dir

    if not os.path.isdir(folder) and is_hub_id(folder):
        folder = resolve_model_dir(folder, revision=revision, cache_dir=cache_dir, token=token,
                                   local_files_only=local_files_only, weights=False)
    return HymbaTokenizer.from_folder(folder)
