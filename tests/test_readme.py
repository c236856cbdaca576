"""The README's commands, walked: a newcomer runs them in order after the setup command.

Every command of the README's ``bash`` and ``console`` blocks is either

* run as written, in order, in a fresh folder holding a copy of the README (the commands that need
  no GPU, no network, no released checkpoint and none of the user's own data); the setup command's
  ``hymba train`` runs with fewer steps (the full run takes minutes; ``HYMBA_RUN_SLOW=1`` runs it
  as written), then the tour's generate, chat, plot and eval run on its ``hymba-run/final``, and
  so does the tour's Python block (load, save model + tokenizer, generate from the copy);
* or, for ``hymba`` commands that need one of those, parsed by the real ``hymba`` parser;
* or, for other programs, listed in ``NOT_RUN`` with the reason.

A README command this file cannot place fails the test, so README and test stay in step.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hymba.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

SETUP = "pip install torch==2.13.0 && pip install -e '.[test]' && hymba train"
# The main job, shortened for the walk (same data, tokenizer and preset as the default run).
SHORT_TRAIN = "hymba train --max-steps 4 --eval-every 2 --save-every 2 --sample-tokens 8"

# Programs other than `hymba`, by the start of their command line: why the walk does not run them.
NOT_RUN = {
    "python -m pytest": "the test suite itself",
    "lm_eval ": "needs the [eval] extra, a released checkpoint and a GPU",
    "torchrun ": "several processes on the user's data",
    "python benchmarks/throughput.py": "needs a GPU and Hugging Face models (network)",
    "python benchmarks/scan_cpu.py": "a CPU benchmark: minutes of timing, nothing to check",
    "python benchmarks/serve.py": "needs a GPU (the Hymba-1.5B shape and transformers' batching)",
    "hf download": "downloads a released checkpoint (network)",
    "pip install -e '.[hf]'": "installs an extra (network)",
    "curl ": "talks to a running hymba serve (tests/serving drives a real server with the openai client)",
}
# Marks of `hymba` commands that are parsed, not run: what they need that a fresh clone lacks.
PARSE_ONLY = {
    "path/to/": "a released checkpoint (download)",
    "--device cuda": "a GPU",
    "Hymba-1.5B-Base": "a released checkpoint (download)",
    "corpus/": "the user's corpus",
    "TOK_DIR": "the user's tokenizer",
    "my.jsonl": "the user's data",
    "train.yaml": "the user's settings file",
    "runs/125m": "a long run on the user's data",
    "--budget small": "tens of minutes of training",
    "--budget large": "a GPU",
    "hymba serve": "a server that runs until stopped (tests/serving starts and stops one)",
    "RUN": "the user's earlier run folder",
    "run.json": "the user's settings file",
    "Hymba-1.5B-Instruct": "a released checkpoint (download)",
    "chats.jsonl": "the user's chat data",
    "runs/instruct-lora": "a fine-tuning run on the user's data",
}
# Commands whose README output is shown in full and is the same on every machine.
EXACT_OUTPUT = {"hymba cache-size --preset hymba-1.5b --seq 8000"}


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """``(command, shown output lines)`` of every ``bash`` / ``console`` block, in order.
    Continuation lines (ending in ``\\``) are joined; trailing ``# comments`` dropped."""
    commands: list[tuple[str, list[str]]] = []
    for lang, body in re.findall(r"^```(bash|console)\n(.*?)^```", text, re.S | re.M):
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if lang == "console":
                if not line.startswith("$ "):
                    if commands:
                        commands[-1][1].append(line)
                    continue
                line = line[2:]
            if not line.strip():
                continue
            while line.endswith("\\") and i < len(lines):
                line = line[:-1].rstrip() + " " + lines[i].strip()
                i += 1
            commands.append((re.sub(r"\s+#\s.*$", "", line).strip(), []))
    return commands


def _plan(command: str) -> tuple[str, str]:
    """("run" | "parse" | "skip", why) for one README command."""
    if command == SETUP:
        return "run", "the setup's main job"
    for start, why in NOT_RUN.items():
        if command.startswith(start):
            return "skip", why
    words = shlex.split(command.split("|")[-1])
    if words[0] != "hymba":
        return "unknown", ""
    if command.rstrip().endswith("&"):
        return "parse", "runs in the background until stopped"
    for mark, why in PARSE_ONLY.items():
        if mark in command:
            return "parse", why
    if "..." in words:
        return "parse", "a placeholder"
    return "run", ""


def test_every_readme_command_is_placed_and_every_hymba_line_parses():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert commands[0][0] == SETUP, "the README starts with the setup command"
    assert any(c == "python -m pytest -q" for c, _ in commands)
    unknown = [c for c, _ in commands if _plan(c)[0] == "unknown"]
    assert not unknown, f"README commands this test does not know how to walk: {unknown}"
    parser = build_parser()
    for command, _ in commands:
        segment = command.split("&&")[-1].split("|")[-1]
        words = [w for w in shlex.split(segment) if w not in ("...", "&")]  # `&`: run in the background
        if words[0] == "hymba":
            parser.parse_args(words[1:])  # argparse exits (SystemExit) on a flag that does not exist
    # the setup's extra gives what the README's plotting commands need
    test_extra = re.search(r"^test = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert '"matplotlib' in test_extra


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    shutil.copy(README, tmp_path / "README.md")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    # `hymba` is this checkout's command, whatever is installed
    prelude = f"hymba() {{ {shlex.quote(sys.executable)} -m hymba \"$@\"; }}\nset -o pipefail\n"
    ran = []
    for command, shown in readme_commands(README.read_text(encoding="utf-8")):
        kind, _ = _plan(command)
        if kind != "run":
            continue
        script = command
        if command == SETUP:
            script = "hymba train" if os.environ.get("HYMBA_RUN_SLOW") == "1" else SHORT_TRAIN
        proc = subprocess.run(["bash", "-c", prelude + script], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        ran.append(command)
        out = proc.stdout.splitlines()
        if command in EXACT_OUTPUT:
            assert [line.rstrip() for line in out] == [line.rstrip() for line in shown], command
        if "hymba chat" in command:  # the REPL's own lines, as shown, in order
            marks = [line for line in shown if line.startswith(("Commands:", "you> ", "(conversation"))]
            found = iter(out)
            assert all(any(line.startswith(mark) for line in found) for mark in marks), (command, out)
    # the tour's Python block: load, run and save the model and its tokenizer, then use the copy
    tour = re.search(r"^```python\n(import torch\nfrom hymba .*?)^```", README.read_text(encoding="utf-8"),
                     re.S | re.M).group(1)
    subprocess.run([sys.executable, "-c", tour], cwd=tmp_path, env=env, check=True, timeout=300)
    proc = subprocess.run(["bash", "-c", prelude + "hymba generate --model my-copy --prompt KING. --max-new-tokens 4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for expected in ("hymba-run/final/model.safetensors", "hymba-run/loss.png", "analysis/analysis.json",
                     "passkey.png", "ablation-tiny/ablation.json"):
        assert (tmp_path / expected).is_file(), expected
    assert any("hymba chat --model hymba-run/final" in c for c in ran)
    assert any("hymba generate --model hymba-run/final" in c for c in ran)
    # nothing the walk wrote shows up in `git status` of a clone
    ignored = (REPO / ".gitignore").read_text().split()
    for name in os.listdir(tmp_path):
        if name != "README.md":
            assert f"/{name}/" in ignored or f"/{name}" in ignored, name
