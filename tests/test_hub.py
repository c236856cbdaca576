"""Hub ids wherever a model is named, resolved offline from a hub-layout cache (never the hub)."""

from __future__ import annotations

import json

import pytest
import torch
from hubkit import BUNDLED_TOKENIZER, add_snapshot, checkpoint_files
from safetensors.torch import load_file

from hymba import CheckpointError, HymbaForCausalLM, load_tokenizer
from hymba.cli import main
from hymba.hub import MODEL_PATTERNS, is_hub_id, resolve_model_dir

REPO_ID = "hymba-test/tiny-ref"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every test here runs with the hub unreachable by construction: offline mode, set now."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def cache(tmp_path, fixture_dir):
    root = tmp_path / "hub"
    add_snapshot(root, REPO_ID, checkpoint_files(fixture_dir))
    return root


def test_hub_id_shapes():
    assert is_hub_id("nvidia/Hymba-1.5B-Base") and is_hub_id("a/b.c_d-e")
    for name in ("nvidia", "./nvidia/x", "/abs/path", "a/b/c", "a--b/c", "a/../b", "~/x", "a/b.", ""):
        assert not is_hub_id(name), name


def test_from_pretrained_by_hub_id_matches_the_folder(cache, fixture_dir):
    ours = HymbaForCausalLM.from_pretrained(REPO_ID, cache_dir=cache, dtype=torch.float32)
    folder = resolve_model_dir(REPO_ID, cache_dir=cache)
    assert folder.parent.parent.name == "models--hymba-test--tiny-ref" and folder.parent.name == "snapshots"
    ids = load_file(fixture_dir / "inputs.safetensors")["len16"]
    expected = load_file(fixture_dir / "expected.safetensors")["len16"]
    with torch.no_grad():
        assert (ours(ids).logits - expected).abs().max().item() <= 1e-4
    tok = load_tokenizer(REPO_ID, cache_dir=cache)
    assert tok.encode("kx zq wv") == load_tokenizer(BUNDLED_TOKENIZER).encode("kx zq wv")


def test_revisions_branch_tag_and_commit(tmp_path, fixture_dir):
    root = tmp_path / "hub"
    files = checkpoint_files(fixture_dir)
    main_commit = add_snapshot(root, REPO_ID, files)
    config = json.loads((fixture_dir / "config.json").read_text())
    config["num_memory_tokens"] = 0  # another model at tag v0: its snapshot has no weights for it
    tagged = add_snapshot(root, REPO_ID, {**files, "config.json": json.dumps(config).encode()}, revision="v0")
    assert resolve_model_dir(REPO_ID, cache_dir=root).name == main_commit
    assert resolve_model_dir(REPO_ID, cache_dir=root, revision="v0").name == tagged
    assert resolve_model_dir(REPO_ID, cache_dir=root, revision=main_commit).name == main_commit
    with pytest.raises(CheckpointError, match="does not match its config"):
        HymbaForCausalLM.from_pretrained(REPO_ID, cache_dir=root, revision="v0")
    with pytest.raises(CheckpointError, match=r"tiny-ref \(revision v9\) is not in the hub cache"):
        HymbaForCausalLM.from_pretrained(REPO_ID, cache_dir=root, revision="v9")


def test_a_local_folder_wins_over_a_hub_id(tmp_path, monkeypatch, fixture_dir):
    local = tmp_path / "hymba-test" / "tiny-ref"
    local.mkdir(parents=True)
    for name, source in checkpoint_files(fixture_dir).items():
        (local / name).write_bytes(source.read_bytes())
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty-cache"
    assert resolve_model_dir(REPO_ID, cache_dir=empty) == local.relative_to(tmp_path)
    HymbaForCausalLM.from_pretrained(REPO_ID, cache_dir=empty)


def test_failures_name_the_id_and_what_to_do(tmp_path, cache, fixture_dir):
    with pytest.raises(CheckpointError, match=r"hub model hymba-test/nope is not in the hub cache .*"
                                              r"offline mode is on \(HF_HUB_OFFLINE=1.*hf download hymba-test/nope"):
        HymbaForCausalLM.from_pretrained("hymba-test/nope", cache_dir=cache)
    with pytest.raises(CheckpointError, match="is not in the hub cache"):
        load_tokenizer("hymba-test/nope", cache_dir=cache)
    with pytest.raises(CheckpointError, match="does not exist"):
        HymbaForCausalLM.from_pretrained(tmp_path / "no" / "such" / "folder", cache_dir=cache)
    # a repo that ships only pickle weights: nothing of them was (or ever is) fetched
    add_snapshot(cache, "hymba-test/pickles", {"config.json": fixture_dir / "config.json",
                                               "pytorch_model.bin": b"not unpickled"})
    with pytest.raises(CheckpointError, match=r"hymba-test/pickles has no safetensors weights .*never "
                                              r"downloads pickle \(\*\.bin\)"):
        HymbaForCausalLM.from_pretrained("hymba-test/pickles", cache_dir=cache)


def test_hub_errors_become_one_checkpoint_error(monkeypatch):
    """What the hub answers online (simulated: no request is made) maps to one clear error."""
    import huggingface_hub
    from huggingface_hub import errors

    def fails_with(cls):
        def snapshot_download(*args, **kwargs):
            exc = cls.__new__(cls)  # hub HTTP errors want an HTTP response to be built from
            Exception.__init__(exc, "simulated")
            raise exc
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

    for cls, message in [
        (errors.RepositoryNotFoundError, "not found on the hub .*token"),
        (errors.GatedRepoError, "is gated: accept its terms"),
        (errors.RevisionNotFoundError, "no such revision"),
        (errors.LocalEntryNotFoundError, "the hub cannot be reached"),
    ]:
        fails_with(cls)
        with pytest.raises(CheckpointError, match=f"hub model a/b.*{message}"):
            resolve_model_dir("a/b", local_files_only=False)


def test_only_safetensors_json_and_tokenizer_files_are_fetched(monkeypatch, tmp_path):
    """The patterns handed to snapshot_download, applied to the released repo's file list."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    released = ["config.json", "configuration_hymba.py", "modeling_hymba.py", "model.safetensors",
                "pytorch_model.bin", "model.pt", "setup.sh", "README.md", "images/macro_arch.png",
                "generation_config.json", "special_tokens_map.json", "tokenizer.json",
                "tokenizer.model", "tokenizer_config.json", "model-00001-of-00002.safetensors",
                "model.safetensors.index.json"]
    seen = {}

    def snapshot_download(repo_id, **kwargs):
        seen.update(kwargs)
        return str(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(CheckpointError, match="no safetensors"):  # the fake snapshot is empty
        resolve_model_dir("a/b", revision="v1", token="t", cache_dir=tmp_path)
    assert seen["revision"] == "v1" and seen["token"] == "t" and seen["local_files_only"] is True
    fetched = set(filter_repo_objects(released, allow_patterns=seen["allow_patterns"]))
    assert fetched == {"config.json", "model.safetensors", "generation_config.json",
                       "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                       "tokenizer_config.json", "model-00001-of-00002.safetensors",
                       "model.safetensors.index.json"}
    assert set(seen["allow_patterns"]) == set(MODEL_PATTERNS)
    resolve_model_dir("a/b", weights=False)
    tokenizer_only = set(filter_repo_objects(released, allow_patterns=seen["allow_patterns"]))
    assert not any(name.endswith(".safetensors") for name in tokenizer_only)


def test_cli_model_accepts_a_hub_id(cache, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert main(["info", "--model", REPO_ID]) == 0
    assert "8 layers, hidden 64" in capsys.readouterr().out
    assert main(["generate", "--model", REPO_ID, "--prompt", "kx zq wv", "--max-new-tokens", "4",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", "hymba-test/nope", "--prompt", "kx", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hymba generate: error: hub model hymba-test/nope is not in the hub cache")
    assert "\n" not in err


def test_transformers_auto_class_by_hub_id(cache, fixture_dir):
    pytest.importorskip("transformers", minversion="5", reason="needs transformers >= 5 (hymba[hf])")
    from transformers import AutoModelForCausalLM

    from hymba.hf import HymbaHFForCausalLM

    model = AutoModelForCausalLM.from_pretrained(REPO_ID, cache_dir=cache)
    assert type(model) is HymbaHFForCausalLM
    ids = load_file(fixture_dir / "inputs.safetensors")["len7"]
    with torch.no_grad():
        assert (model(ids).logits - load_file(fixture_dir / "expected.safetensors")["len7"]).abs().max() <= 1e-4
    with pytest.raises(OSError):  # transformers' own config lookup fails first, offline
        AutoModelForCausalLM.from_pretrained("hymba-test/nope", cache_dir=cache)
    with pytest.raises(CheckpointError, match="hymba-test/nope is not in the hub cache"):
        HymbaHFForCausalLM.from_pretrained("hymba-test/nope", cache_dir=cache)
