"""``hymba info`` and the CLI's error handling."""

from __future__ import annotations

import subprocess
import sys

from hymba.cli import main


def test_info_preset(capsys):
    assert main(["info", "--preset", "hymba-1.5b", "--seq", "8000"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 1,522,797,824" in out
    assert "reuses KV of 16" in out and out.count("global") >= 3
    assert "5,760 bytes" in out  # 3 global layers x 5 heads x (64 + 128) x 2 bytes


def test_info_model_folder(tmp_path, capsys):
    from hymba import HymbaConfig, HymbaForCausalLM

    HymbaForCausalLM(HymbaConfig.from_preset("tiny")).save_pretrained(tmp_path)
    assert main(["info", "--model", str(tmp_path)]) == 0
    assert "6 layers" in capsys.readouterr().out


def test_bad_input_gives_one_line_and_status_2(tmp_path, capsys):
    assert main(["info", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hymba info: error:") and "\n" not in err
    assert main(["info", "--preset", "tiny", "--seq", "-5"]) == 2
    assert "--seq must be >= 1" in capsys.readouterr().err
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2
    (tmp_path / "config.json").write_text("{")
    assert main(["info", "--model", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "hymba", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "hymba", "info", "--seq", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid int value" in bad.stderr
