"""The ``hymba`` command line.

Every module in this package that defines ``register(subparsers)`` adds one subcommand; its
handler imports what it needs lazily so that ``hymba --help`` stays fast. Errors that come from
bad input (config, checkpoint, flags, prompts, data) print one line and exit with status 2; running
out of memory prints one line and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from .. import __version__


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Each flag's help line ends with its default, unless the help already names one or there is
    none to show (``None``, an on/off switch, a suppressed default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default in (None, [], ())
                or isinstance(default, bool) or default is argparse.SUPPRESS or action.nargs == 0):
            return text
        if isinstance(default, (list, tuple)):
            shown = (" " if action.nargs in ("+", "*") else ",").join(map(str, default))
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class Parser(argparse.ArgumentParser):
    """An argument parser with :class:`HelpFormatter`; subcommand parsers inherit it."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hymba",
        description="Run, train, evaluate and benchmark Hymba hybrid-head language models.",
    )
    parser.add_argument("--version", action="version", version=f"hymba {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..model import InputError
    from ..tokenizer import TokenizerError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(args.command, warnings.showwarning)
            return int(args.func(args) or 0)
    except (CLIError, ConfigError, CheckpointError, InputError, TokenizerError, FileNotFoundError,
            PermissionError) as exc:
        print(f"hymba {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        print(f"hymba {args.command}: error: out of memory ({detail}); "
              "try shorter inputs, a smaller batch or another device", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _one_line_warnings(command: str, show):
    """A ``warnings.showwarning`` that prints hymba's own warnings (a misspelled config key) as
    one line, ``hymba COMMAND: warning: ...``, and hands the others to ``show``."""
    from ..config import ConfigWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigWarning):
            print(f"hymba {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def _out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, torch's CUDA OutOfMemoryError or its CPU allocator's."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(exc))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
