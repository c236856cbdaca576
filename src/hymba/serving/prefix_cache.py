"""Prefix-state reuse: the state after a prompt's first tokens, kept for later prompts that
start with the same tokens, at any token boundary.

A hybrid model's state after ``n`` tokens is small and fixed apart from the global layers' K/V
(:class:`~hymba.inference.cache.RowSnapshot`): the sliding-window rings, the conv inputs and the
SSM state summarise everything before them. So a snapshot taken exactly at the end of a shared
prefix lets a later request skip that prefix's prefill entirely, whatever its length: no block
boundary to round down to.

Where to take snapshots: the engine remembers recent prompts; a new prompt that shares a long
enough prefix with one of them (:meth:`PrefixCache.shared_prefix`) is prefilled in two spans split
at the end of that prefix, and the state at the split is stored. The third request with the same
system prompt or few-shot header then starts from it. Entries are evicted least recently used
first to stay within a byte budget.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from ..inference.cache import RowSnapshot

MIN_SHARED_TOKENS = 16  # shorter shared prefixes are not worth a snapshot
RECENT_PROMPTS = 64


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.entries: OrderedDict[tuple[int, ...], RowSnapshot] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.recent: deque[tuple[int, ...]] = deque(maxlen=RECENT_PROMPTS)

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def lookup(self, prompt: list[int]) -> RowSnapshot | None:
        """The snapshot of the longest stored prefix of ``prompt`` that leaves at least one
        prompt token to prefill (its logits choose the first new token), or None."""
        if not self.enabled:
            return None
        best = None
        for key in self.entries:
            if len(key) < len(prompt) and (best is None or len(key) > len(best)) and tuple(prompt[: len(key)]) == key:
                best = key
        if best is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(best)
        return self.entries[best]

    def shared_prefix(self, prompt: list[int], start: int) -> int | None:
        """Where to split ``prompt``'s prefill to store a snapshot: the end of the longest prefix
        it shares with a recent prompt, if that is at least :data:`MIN_SHARED_TOKENS` long, past
        ``start`` (what a snapshot already covers), not already stored, and short of the whole
        prompt. Remembers ``prompt``."""
        if not self.enabled:
            return None
        mine = tuple(prompt)
        best = 0
        for other in self.recent:
            best = max(best, _common_prefix(mine, other))
        self.recent.append(mine)
        best = min(best, len(prompt) - 1)
        if best < MIN_SHARED_TOKENS or best <= start or tuple(prompt[:best]) in self.entries:
            return None
        return best

    def store(self, prefix: list[int], snap: RowSnapshot) -> None:
        key = tuple(prefix)
        if not self.enabled or key in self.entries or snap.nbytes > self.budget:
            return
        self.entries[key] = snap
        self.bytes += snap.nbytes
        while self.bytes > self.budget:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.nbytes


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``: a binary search over slice
    comparisons (each one C-speed), not a Python loop over thousands of tokens."""
    lo, hi = 0, min(len(a), len(b))  # a[:lo] == b[:lo]; the answer is at most hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
