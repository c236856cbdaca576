"""``import hymba`` without transformers: nothing to register, and hymba.hf says what to install."""

from __future__ import annotations

import importlib
import sys

import pytest

from hymba import _hf_hook


def test_hymba_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # any `import transformers` fails
    for name in [m for m in sys.modules if m == "hymba.hf" or m.startswith("hymba.hf.")]:
        monkeypatch.delitem(sys.modules, name)
    _hf_hook.install()  # no error, nothing imported
    with pytest.raises(ImportError, match=r"pip install 'hymba\[hf\]'"):
        importlib.import_module("hymba.hf")
