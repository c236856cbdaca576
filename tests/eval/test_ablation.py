"""The ablation: variant switches, data stream, and an end-to-end smoke run of the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hymba.cli import main
from hymba.config import global_layers, kv_share_groups
from hymba.eval import ablation
from hymba.eval.recall import SyntheticVocab


def test_variants_are_distinct_valid_configs():
    budget = ablation.BUDGETS["small"]
    vocab = SyntheticVocab(4 + 2 * budget.num_keys + 256, budget.num_keys, budget.num_keys)
    plans = {}
    for key, _, _, make in ablation.VARIANTS:
        config = ablation.variant_config(budget, make(budget.layers, budget.meta), vocab.vocab_size)
        plans[key] = (config.mixer_type, config.num_memory_tokens,
                      tuple((s.window, s.kv_source) for s in config.layer_plan()))
    assert len(set(plans.values())) == len(plans)
    hymba = ablation.variant_config(budget, ablation.VARIANTS[-1][3](6, 8), vocab.vocab_size)
    plan = hymba.layer_plan()
    assert [s.index for s in plan if s.is_global] == [0, 2, 5]
    assert [s.index for s in plan if not s.computes_kv] == [4]  # layers 3 and 4 share K/V


@pytest.mark.parametrize("layers,expected", [(6, [[3, 4]]), (8, [[1, 2], [4, 5, 6]]), (4, [])])
def test_kv_share_groups(layers, expected):
    assert kv_share_groups(layers, global_layers(layers)) == expected


def test_variant_switches_are_pinned():
    """The variants' switches, as they were when the ablation had its own copy of the layout rule."""
    compressed = {"global_attn_idx": [0, 3, 7], "kv_reuse_group": [[1, 2], [4, 5, 6]]}
    all_global = {"sliding_window": None, "global_attn_idx": [], "kv_reuse_group": []}
    expected = {
        "ssm": {"mixer_type": "ssm", "num_memory_tokens": 0},
        "ssm-meta": {"mixer_type": "ssm", "num_memory_tokens": 4},
        "attn": {"mixer_type": "attention", "num_memory_tokens": 0, **all_global},
        "attn-compressed": {"mixer_type": "attention", "num_memory_tokens": 0, **compressed},
        "hybrid-global": {"num_memory_tokens": 0, **all_global},
        "hybrid-swa": {"global_attn_idx": [], "kv_reuse_group": [], "num_memory_tokens": 0},
        "hybrid-swa3": {"global_attn_idx": [0, 3, 7], "kv_reuse_group": [], "num_memory_tokens": 0},
        "hybrid-kvshare": {"num_memory_tokens": 0, **compressed},
        "hymba": {"num_memory_tokens": 4, **compressed},
    }
    assert {key: make(8, 4) for key, _, _, make in ablation.VARIANTS} == expected
    assert ablation.VARIANTS[-1][3](6, 8) == {"num_memory_tokens": 8, "global_attn_idx": [0, 2, 5],
                                              "kv_reuse_group": [[3, 4]]}


def test_training_stream_mixes_recall_and_text():
    budget = ablation.BUDGETS["tiny"]
    vocab = SyntheticVocab(4 + 2 * budget.num_keys + 256, budget.num_keys, budget.num_keys)
    works, held = ablation.split_corpus(ablation.corpus_works(), 3, seed=0)
    text = ablation.ByteText(vocab, works)
    budget = dataclasses.replace(budget, steps=40)
    batches = list(ablation.training_batches(budget, vocab, text, seed=0))
    assert len(batches) == budget.steps
    lengths = set()
    for step, (ids, labels) in enumerate(batches):
        assert ids.numel() == budget.batch * budget.train_len  # same tokens every step
        scored = (labels != -100).sum().item()
        is_text = step % budget.text_every == budget.text_every - 1
        assert scored == (ids.numel() if is_text else ids.shape[0] * budget.pairs)
        lengths.add(ids.shape[1])
    assert lengths == {32, 16, 8} == set(ablation.mqar_lengths(budget)) | {budget.train_len}
    assert batches[0][0].equal(list(ablation.training_batches(budget, vocab, text, seed=0))[0][0])


def test_held_out_text_is_whole_works():
    works = ablation.corpus_works()
    assert len(works) >= 40 and all(w.isascii() for w in works)
    train, held = ablation.split_corpus(works, 48, seed=0)
    assert len(held) == 48 and all(len(p) <= ablation.PASSAGE_CHARS for p in held)
    held_works = [w for w in works if w not in train]
    assert len(train) + len(held_works) == len(works)
    assert all(any(p in w for w in held_works) and not any(p in w for w in train) for p in held)
    assert ablation.passages("a\n\nb\n\nc", size=4) == ["a\n\nb", "c"]
    assert ablation.passages("aa\nbb\ncc\n\nd", size=5) == ["aa\nbb", "cc\n\nd"]  # long paragraph: at lines
    every = [p for w in works for p in ablation.passages(w)]
    assert all(len(p) <= ablation.PASSAGE_CHARS or "\n" not in p for p in every)  # only single lines are longer


def test_cli_tiny_budget(tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["ablate", "--budget", "tiny", "--steps", "2", "--variants", "ssm,attn-compressed,hymba",
                 "--device", "cpu", "--out", str(out)] + ([] if _has_matplotlib() else ["--no-plots"])) == 0
    data = json.loads((out / "ablation.json").read_text())
    rows = {r["key"]: r for r in data["rows"]}
    assert list(rows) == ["ssm", "attn-compressed", "hymba"]
    for row in rows.values():
        assert 0 <= row["recall_within"] <= 1 and 0 <= row["recall_beyond"] <= 1
        assert row["ppl"] > 1 and row["tok_per_s"] > 0
    # cache: SSM state only < attention with compressed KV < the same plus SSM state and meta K/V
    assert rows["ssm"]["cache_mb"] < rows["attn-compressed"]["cache_mb"] < rows["hymba"]["cache_mb"]
    assert "Table 10 row" in (out / "ablation.md").read_text()
    if _has_matplotlib():
        assert (out / "ablation.png").stat().st_size > 1000
    assert main(["ablate", "--budget", "tiny", "--variants", "nope", "--no-plots",
                 "--out", str(out)]) == 2


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_cli_resumes_and_merges(tmp_path, capsys):
    out = tmp_path / "abl"
    common = ["ablate", "--budget", "tiny", "--steps", "2", "--no-plots", "--device", "cpu", "--out", str(out)]
    assert main(common + ["--variants", "attn"]) == 0
    first = json.loads((out / "ablation.json").read_text())["rows"][0]
    assert main(common + ["--variants", "attn,ssm"]) == 0
    assert "keeping 1 variants" in capsys.readouterr().out
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert [r["key"] for r in rows] == ["ssm", "attn"] and rows[1] == first


def test_cli_parallel_jobs_match_sequential(tmp_path, capsys):
    """--jobs trains each variant in a child process; the rows equal a sequential run's."""
    common = ["ablate", "--budget", "tiny", "--steps", "2", "--no-plots", "--device", "cpu",
              "--variants", "ssm,attn"]
    assert main(common + ["--out", str(tmp_path / "seq")]) == 0
    assert main(common + ["--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    assert (tmp_path / "par" / "parts" / "ssm.log").exists()

    def rows(name: str) -> list[dict]:
        data = json.loads((tmp_path / name / "ablation.json").read_text())["rows"]
        return [{k: r[k] for k in ("key", "recall_within", "recall_beyond", "ppl", "final_loss")} for r in data]

    # children may use another thread count: same numbers up to summation order
    par, seq = rows("par"), rows("seq")
    assert [r["key"] for r in par] == [r["key"] for r in seq] == ["ssm", "attn"]
    for a, b in zip(par, seq):
        assert {k: v for k, v in a.items() if k != "key"} == pytest.approx(
            {k: v for k, v in b.items() if k != "key"}, rel=1e-3, abs=1e-3)
    assert main(common + ["--out", str(tmp_path / "bad"), "--jobs", "0"]) == 2


def test_cli_without_matplotlib_says_so_before_any_work(monkeypatch, tmp_path, capsys):
    from hymba.eval import plots

    def missing() -> None:
        raise ImportError("the plots need matplotlib: pip install 'hymba[eval]'")

    monkeypatch.setattr(plots, "require_matplotlib", missing)
    assert main(["ablate", "--budget", "tiny", "--out", str(tmp_path / "abl")]) == 2
    assert "or pass --no-plots" in capsys.readouterr().err
    assert not (tmp_path / "abl").exists()
