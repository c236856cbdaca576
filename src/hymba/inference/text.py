"""Text as it is generated: new tokens in, pieces of text safe to show out.

Used by :func:`hymba.inference.stream` and by the serving engine for each request.
"""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    """The text of one growing token sequence, decoded a short tail at a time.

    Each new token is decoded together with the tokens since the last piece of text was read and
    the piece before them as context (a token's text can depend on the one before it, and a
    character may span tokens), so the cost per token does not grow with the output. Text is
    held back while it ends in an incomplete character or may still grow into one of ``stops``;
    the first stop string found ends the text before it.
    """

    def __init__(self, tokenizer, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.tokens: list[int] = []
        self.text = ""
        self.shown = 0  # characters of ``text`` already handed out
        self._from = 0  # incremental decoding: context starts here ...
        self._read = 0  # ... and the tokens from here on are not in ``text`` yet

    def push(self, token: int) -> None:
        """Add ``token`` to the text."""
        self.tokens.append(token)
        before = self.tokenizer.decode(self.tokens[self._from : self._read])
        after = self.tokenizer.decode(self.tokens[self._from :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._from, self._read = self._read, len(self.tokens)

    def visible(self, final: bool = False) -> tuple[str, bool]:
        """The text that became safe to show, and whether a stop string was reached (the text is
        then cut before it). ``final``: the sequence has ended, so nothing is held back any more
        (an incomplete character at the end is dropped)."""
        if final:
            before = self.tokenizer.decode(self.tokens[self._from : self._read])
            after = self.tokenizer.decode(self.tokens[self._from :]).rstrip("\ufffd")
            self.text += after[len(before) :]
            self._from = self._read = len(self.tokens)
        text = self.text
        if self.stops:
            start = max(0, self.shown - max(map(len, self.stops)))
            cut = min((i for i in (text.find(s, start) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                piece = text[self.shown : cut] if cut > self.shown else ""
                self.shown = max(self.shown, cut)
                return piece, True
        safe = len(text) if final else safe_length(text, self.stops)
        piece = text[self.shown : safe] if safe > self.shown else ""
        self.shown = max(self.shown, safe)
        return piece, False


def safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be shown: not an incomplete character at the end, nor a suffix
    that may grow into a stop string."""
    safe = len(text.rstrip("\ufffd"))
    for stop in stops:
        for k in range(min(len(stop) - 1, safe), 0, -1):
            if text[:safe].endswith(stop[:k]):
                safe -= k
                break
    return safe
