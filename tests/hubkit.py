"""A Hugging Face hub cache built offline, laid out exactly as ``huggingface_hub`` lays it out:

    <cache>/models--<owner>--<name>/blobs/<hash>                  file contents
    <cache>/models--<owner>--<name>/snapshots/<commit>/<file>     relative symlinks to the blobs
    <cache>/models--<owner>--<name>/refs/<branch or tag>          the commit hash (no newline)

Tests never reach the hub: they read such a cache with ``HF_HUB_OFFLINE=1``/``local_files_only``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED_TOKENIZER = REPO / "src" / "hymba" / "data"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def add_snapshot(cache: Path, repo_id: str, files: dict[str, Path | bytes], revision: str = "main") -> str:
    """Store ``files`` (repo path -> source file or bytes) as one commit of ``repo_id`` in the
    hub cache ``cache``, pointed at by ``refs/<revision>``; returns the commit hash."""
    storage = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}@{revision}:{sorted(files)}".encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    for name, source in files.items():
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    return commit


def checkpoint_files(fixture_dir: Path) -> dict[str, Path]:
    """The reference fixture's released-format files plus the bundled tokenizer."""
    files = {name: fixture_dir / name for name in ("config.json", "generation_config.json", "model.safetensors")}
    files.update({name: BUNDLED_TOKENIZER / name for name in TOKENIZER_FILES})
    return files


def released_folder(fixture_dir: Path, out: Path) -> Path:
    """``out`` holding :func:`checkpoint_files` as a plain released-format folder (copies)."""
    for name, source in checkpoint_files(fixture_dir).items():
        shutil.copy(source, Path(out) / name)
    return Path(out)
