"""Helpers every subcommand shares: output files, out-of-memory reporting, device names."""

from __future__ import annotations

import json
import os

import pytest

from hymba.cli import CLIError, main
from hymba.cli._common import check_output_file, resolve_device
from hymba.jsonfile import write_json


def test_write_json_replaces_files_and_writes_through_links(tmp_path):
    path = tmp_path / "out.json"
    write_json(str(path), {"a": 1})
    write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and os.listdir(tmp_path) == ["out.json"]
    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    check_output_file(str(link))
    write_json(str(link), [1])
    assert link.is_symlink() and json.loads(target.read_text()) == [1]
    check_output_file(os.devnull)  # an existing writable file that is not in a writable folder
    write_json(os.devnull, {"b": 1})
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)


def test_check_output_file_names_the_problem(tmp_path):
    with pytest.raises(CLIError, match="is a folder"):
        check_output_file(str(tmp_path))
    with pytest.raises(CLIError, match="does not exist"):
        check_output_file(str(tmp_path / "missing" / "x.json"))
    check_output_file(None)


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    import hymba.cli.info as info

    def run(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 40016801764 bytes.\nmore detail")
    monkeypatch.setattr(info, "run", run)
    assert main(["info"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hymba info: error: out of memory") and "\n" not in err
    monkeypatch.setattr(info, "run", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other failures are bugs: their traceback stays
        main(["info"])


@pytest.mark.parametrize("name, message", [("foo", "is not a device"), ("cuda:x", "is not a device")])
def test_bad_device_names(name, message):
    with pytest.raises(CLIError, match=message):
        resolve_device(name)
