"""Registers hymba's transformers classes (:mod:`hymba.hf`) when transformers is imported.

``import hymba`` calls :func:`install`. If transformers is already imported, the classes are
registered at once. Otherwise, when transformers is installed, a finder waits for it (as
``_hymba_lm_eval`` waits for lm-eval) and registers right after ``transformers`` has run, so that
``import hymba`` never imports transformers itself (it is slow to import, and optional).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

WATCHED = "transformers"
MIN_MAJOR = 5


def register() -> None:
    """Import :mod:`hymba.hf` (which registers) if this transformers is new enough; otherwise,
    or if registering fails, warn and go on, so that transformers itself still imports."""
    import transformers

    version = getattr(transformers, "__version__", "0")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_MAJOR:
        warnings.warn(f"hymba: transformers {version} is older than {MIN_MAJOR}.0; the Hymba Auto "
                      "classes are not registered (pip install 'hymba[hf]')", stacklevel=2)
        return
    try:
        import hymba.hf  # noqa: F401  (registers on import)
    except Exception as exc:  # never break the user's `import transformers`
        warnings.warn(f"hymba: the Hymba Auto classes could not be registered with transformers "
                      f"{version}: {type(exc).__name__}: {exc}", stacklevel=2)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then registers."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self.inner  # transformers sees its own loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        self.inner.exec_module(module)
        register()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Register now if transformers is imported, else add the finder once if it is installed."""
    if sys.modules.get(WATCHED) is not None:
        register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        if importlib.machinery.PathFinder.find_spec(WATCHED) is not None:
            sys.meta_path.insert(0, _Finder())
