"""Model names: a local checkpoint folder, or a Hugging Face hub id resolved through the hub cache.

:func:`resolve_model_dir` is the one place that turns what a user calls a model (``--model``,
``from_pretrained``, ``load_tokenizer``) into a folder on disk:

* an existing folder is used as is (a local path always wins);
* a string of the form ``owner/name`` that is not an existing folder is a hub id: its
  ``config.json``, safetensors weights and tokenizer files are fetched with
  ``huggingface_hub.snapshot_download`` into the hub cache (``HF_HUB_CACHE``/``HF_HOME``, or
  ``cache_dir``), or found there when offline (``HF_HUB_OFFLINE=1`` or ``local_files_only``).
  Pickle weights (``*.bin``, ``*.pt``) and remote code (``*.py``) are never downloaded.

Every failure (unknown id, revision or gated repo, no network and nothing cached, no safetensors
weights) is one :class:`~hymba.checkpoint.CheckpointError` that names the id and what to do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import INDEX_NAME, WEIGHTS_NAME, CheckpointError

# What a hub snapshot may bring: configs (incl. the safetensors index and tokenizer configs), the
# weights, and the tokenizer files that are not JSON. Nothing executable or pickled.
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
MODEL_PATTERNS = ("*.json", "*.safetensors", *TOKENIZER_PATTERNS)

# owner/name as the hub spells repo ids: letters, digits, '-', '_', '.'; no '--' or '..'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub_id(name: object) -> bool:
    """Whether ``name`` is shaped like a hub repo id ``owner/name`` (not whether it exists)."""
    return (isinstance(name, str) and _HUB_ID.fullmatch(name) is not None
            and "--" not in name and ".." not in name and not name.endswith("."))


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now; huggingface_hub reads it once
    at import, so a value set later in the process is honoured here too."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve_model_dir(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
    weights: bool = True,
) -> Path:
    """The folder that holds the checkpoint ``name_or_path``: a local folder, or a hub id's
    snapshot in the hub cache (downloaded if needed; see the module docstring).

    ``revision`` (branch, tag or commit), ``cache_dir``, ``token`` and ``local_files_only``
    (default: ``HF_HUB_OFFLINE``) apply to hub ids only. ``weights=False`` fetches only the
    configs and tokenizer files (for a tokenizer), and does not require safetensors weights.
    """
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_dir():
        return path
    name = os.fspath(name_or_path)
    if not is_hub_id(name):
        raise CheckpointError(f"checkpoint folder {name} does not exist (nor is it a hub id owner/name)")
    folder = _snapshot(name, revision=revision, cache_dir=cache_dir, token=token,
                       local_files_only=local_files_only, weights=weights)
    if weights and not ((folder / WEIGHTS_NAME).is_file() or (folder / INDEX_NAME).is_file()):
        raise CheckpointError(
            f"hub model {name}{_at(revision)} has no safetensors weights ({WEIGHTS_NAME} or "
            f"{INDEX_NAME}) in its snapshot {folder}: hymba loads safetensors only and never "
            "downloads pickle (*.bin) weights; use a repo that ships safetensors (or, offline, "
            "download the full snapshot first)"
        )
    return folder


def _at(revision: str | None) -> str:
    return f" (revision {revision})" if revision else ""


def _snapshot(name: str, *, revision, cache_dir, token, local_files_only, weights) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise CheckpointError(
            f"{name} is not a local folder; to load it as a hub id install huggingface_hub "
            "(pip install 'huggingface_hub>=0.26')"
        ) from None
    offline = _offline() if local_files_only is None else bool(local_files_only)
    where = f"hub model {name}{_at(revision)}"
    try:
        folder = snapshot_download(
            name, revision=revision, cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            token=token, local_files_only=offline,
            allow_patterns=list(MODEL_PATTERNS if weights else ("*.json", *TOKENIZER_PATTERNS)),
        )
    except GatedRepoError:
        raise CheckpointError(
            f"{where} is gated: accept its terms on huggingface.co and pass a token (token=..., "
            "HF_TOKEN or `hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{where} not found on the hub (is the id right? a private repo needs a token: token=..., "
            f"HF_TOKEN or `hf auth login`), and {name} is not a local folder either"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{where}: no such revision (branch, tag or commit) on the hub") from None
    except LocalEntryNotFoundError:
        reason = ("offline mode is on (HF_HUB_OFFLINE=1 or local_files_only=True)" if offline
                  else "the hub cannot be reached (no network?)")
        raise CheckpointError(
            f"{where} is not in the hub cache ({cache_dir or 'HF_HUB_CACHE'}) and {reason}; download "
            f"it where there is network (`hf download {name}`) into that cache, or pass a local "
            "folder"
        ) from None
    except HFValidationError as exc:
        raise CheckpointError(f"{name!r} is not a valid hub id: {exc}") from None
    except (HfHubHTTPError, OSError) as exc:  # hub errors (5xx, rate limits), disk errors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot fetch {where}: {first}") from None
    return Path(folder)
