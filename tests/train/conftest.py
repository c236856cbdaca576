"""A tiny corpus for the training tests."""

from __future__ import annotations

import json

import pytest

LINES = [
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "All the world's a stage, and all the men and women merely players.",
    "The quality of mercy is not strained; it droppeth as the gentle rain from heaven.",
    "Of Man's first disobedience, and the fruit of that forbidden tree.",
]


@pytest.fixture
def corpus(tmp_path):
    """A jsonl corpus of 40 short documents (about 800 tokens)."""
    path = tmp_path / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(40):
            fh.write(json.dumps({"text": f"{LINES[i % 4]} ({i})"}) + "\n")
    return path
