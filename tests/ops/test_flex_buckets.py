"""The padded lengths that bound how many shapes FlexAttention compiles."""

from __future__ import annotations

import pytest

flex = pytest.importorskip("hymba.ops.flex", reason="this torch has no FlexAttention")


def test_bucket_length_is_a_small_cover():
    lengths = range(1, 20000)
    buckets = [flex.bucket_length(n) for n in lengths]
    for n, b in zip(lengths, buckets):
        assert b >= n and b % 128 == 0
        assert b - n < max(128, n // 4 + 1), (n, b)
    assert flex.bucket_length(128) == 128 and flex.bucket_length(8192) == 8192
    assert flex.bucket_length(8320) == 10240  # 8K prompt + 128 meta tokens
    # 8 buckets up to 1024, then four per doubling: 1..20K tokens in 25 compilations at most
    assert len(set(buckets)) == 25
