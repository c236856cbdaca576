"""Writing JSON files without leaving a half-written one behind."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON. A new or regular file is replaced atomically (a temporary
    file renamed into place); anything else (a link, /dev/stdout, a pipe) is written to directly."""
    path = os.fspath(path)
    text = json.dumps(data, indent=2) + "\n"
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
