"""Import hook that registers hymba's model with lm-evaluation-harness.

lm-eval (0.4.x) discovers models only through its own registry, filled when ``lm_eval.models``
is imported. ``hymba-lm-eval.pth`` (installed next to this module) imports this module at
interpreter start-up; it adds a finder that waits for ``lm_eval.models`` and, right after that
module has run, registers ``hymba`` as a lazy entry. Nothing else is imported until lm-eval asks
for the model, so start-up cost is one tiny module.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

WATCHED = "lm_eval.models"
TARGET = "hymba.eval.lm_eval:HymbaLM"


def _register() -> None:
    from lm_eval.api.registry import model_registry

    if "hymba" not in model_registry:
        model_registry.register("hymba", target=TARGET)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then registers."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Add the finder once (or register at once if lm-eval's model table is already loaded)."""
    if WATCHED in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
