"""Documents → token ids (and, for chats, a loss mask), in a stream.

Every document ends with the EOS token, so that packed sequences keep documents apart. A text
document starts with BOS when the tokenizer asks for one (``add_bos_token``). A chat is rendered
with the tokenizer's chat template one turn at a time: the text of each assistant reply is the
difference between the conversation rendered with that reply and rendered up to the reply's
generation prompt. Only reply tokens (and the final EOS after a reply) are trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..tokenizer import HymbaTokenizer, TokenizerError
from .sources import DataError, Messages, Piece

# The released Hymba chat format (system, user, assistant and tool turns; no tools/contexts
# blocks), for tokenizers trained here (``hymba tokenizer train``).
CHAT_TEMPLATE = (
    "{{ '<extra_id_0>System' }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '\n' + message['content'].strip() }}{% endif %}{% endfor %}{{ '\n\n' }}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<extra_id_1>User\n' + message['content'].strip() + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<extra_id_1>Assistant\n' + message['content'].strip() + '\n' }}"
    "{% elif message['role'] == 'tool' %}{{ '<extra_id_1>Tool\n' + message['content'].strip() + '\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<extra_id_1>Assistant\n' }}{% endif %}"
)

_BATCH_CHARS = 1 << 20  # text handed to the tokenizer per encode_batch call (bounds memory)


@dataclass
class Encoded:
    """Token ids of (part of) a document; ``mask`` marks trained-on tokens (None: all)."""

    ids: np.ndarray  # int64
    mask: np.ndarray | None = None  # bool, same length
    end: bool = True  # the last part of its document


def chat_segments(tokenizer: HymbaTokenizer, messages: Messages) -> list[tuple[str, bool]]:
    """The rendered chat as consecutive ``(text, is_reply)`` segments."""
    if not tokenizer.chat_template:
        raise DataError("chat data ('messages') needs a tokenizer with a chat template "
                        "(tokenizer_config.json 'chat_template')")

    def render(upto: int, prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(messages[:upto], add_generation_prompt=prompt)
        except TokenizerError as exc:
            raise DataError(str(exc)) from None

    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, full = render(i, True), render(i + 1, False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError("the chat template does not render a conversation turn by turn "
                            "(an earlier rendering is not a prefix of a later one)")
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    rest = render(len(messages), False)
    if not rest.startswith(done):
        raise DataError("the chat template does not render a conversation turn by turn")
    segments.append((rest[len(done):], False))
    return [(text, reply) for text, reply in segments if text]


class DocumentEncoder:
    """Turns :class:`~hymba.train.sources.Piece` objects into :class:`Encoded` parts."""

    def __init__(self, tokenizer: HymbaTokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise DataError("the tokenizer has no EOS token to separate documents")
        bos = tokenizer.bos_token_id
        self.bos = bos if tokenizer.add_bos_token and bos is not None else None
        self._started = False  # the current text document has produced tokens

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def encode_chat(self, messages: Messages) -> Encoded:
        segments = chat_segments(self.tokenizer, messages)
        pieces = self._ids([text for text, _ in segments])
        ids = np.fromiter((t for p in pieces for t in p), dtype=np.int64)
        mask = np.concatenate([np.full(len(p), reply, dtype=bool) for p, (_, reply) in zip(pieces, segments)]
                              + [np.zeros(0, dtype=bool)])
        last_is_reply = bool(segments) and segments[-1][1]
        return Encoded(np.append(ids, self.eos), np.append(mask, last_is_reply))

    def encode(self, pieces: Iterable[Piece]) -> Iterator[Encoded]:
        """The encoded parts of ``pieces``, in order; whitespace-only documents are dropped."""
        self._started = False
        batch: list[Piece] = []
        chars = 0
        for piece in pieces:
            if isinstance(piece.content, list):
                yield from self._flush(batch)
                batch, chars = [], 0
                yield self.encode_chat(piece.content)
                continue
            batch.append(piece)
            chars += len(piece.content)
            if chars >= _BATCH_CHARS:
                yield from self._flush(batch)
                batch, chars = [], 0
        yield from self._flush(batch)

    def _flush(self, batch: list[Piece]) -> Iterator[Encoded]:
        if not batch:
            return
        for piece, ids in zip(batch, self._ids([p.content for p in batch])):
            has_text = bool(piece.content.strip())
            out = ids if has_text or self._started else []
            if out and not self._started and self.bos is not None:
                out = [self.bos, *out]
            self._started = self._started or has_text
            if piece.end:
                if self._started:
                    out = [*out, self.eos]
                self._started = False
            if out:
                yield Encoded(np.asarray(out, dtype=np.int64), None, piece.end)
