"""The CPU-testable pieces of the quantization benchmarks: benchmarks/quant_quality.py end to end on
a tiny run folder, and the ``quant`` part of benchmarks/throughput.py (GPU-only to run) for its
byte counts and its table."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from tokenkit import write_tokenizer

from hymba import HymbaConfig, HymbaForCausalLM, quantize

pytest.importorskip("torchao.quantization")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench(request):
    sys.path.insert(0, str(BENCHMARKS))
    request.addfinalizer(lambda: sys.path.remove(str(BENCHMARKS)))
    return importlib.import_module("throughput"), importlib.import_module("quant_quality")


def _tiny(vocab: int = 300) -> HymbaForCausalLM:
    torch.manual_seed(0)
    return HymbaForCausalLM(HymbaConfig.from_preset("tiny", vocab_size=vocab)).eval()


def test_stored_bytes_count_the_quantized_data(bench):
    throughput, quality = bench
    model = _tiny()
    plain = throughput.param_bytes(model)
    assert throughput.stored_bytes(model) == quality.weight_bytes(model) == plain
    layers = [m for n, m in model.named_modules() if n.startswith("model.layers.") and isinstance(m, torch.nn.Linear)]
    linear_bytes = sum(m.weight.numel() * 4 for m in layers)
    quantize(model, "int8")
    # int8 data, a float32 scale and an int8 zero point per output feature
    int8_bytes = sum(m.weight.numel() + m.weight.shape[0] * 5 for m in layers)
    assert throughput.stored_bytes(model) == quality.weight_bytes(model) == plain - linear_bytes + int8_bytes


def test_quant_ratios_and_table(bench):
    throughput, _ = bench
    row = lambda ms: dict(ms_step=ms, tok_s=1e3 / ms, roofline_frac=0.5, weight_bytes=3e9)  # noqa: E731
    results = {"quant": {
        "bf16": {"decode_b1": row(10.0), "decode_eager_b1": row(12.0), "decode_b32": row(20.0)},
        "int8": {"decode_b1": row(5.5), "decode_eager_b1": row(9.0), "decode_b32": dict(error="OutOfMemoryError")},
        "int4": {"decode_b1": row(4.5), "decode_b32": row(30.0)},
    }}
    ratios = throughput.quant_ratios(results["quant"])
    assert ratios["int8_decode_b1"] == pytest.approx(0.55) and ratios["int8_goal_met"]
    assert ratios["int4_decode_b1"] == pytest.approx(0.45) and not ratios["int4_goal_met"]
    assert ratios["int4_decode_b32"] == pytest.approx(1.5) and "int8_decode_b32" not in ratios
    results["quant_ratios"] = ratios
    text = throughput.quant_table(results)
    assert "| int8 | 3,000 | 5.50 / 9.00 | 55% | 50% | OutOfMemoryError" in text
    assert "goal int8: batch-1 decode <= 60% of bf16's: met (55%)" in text
    assert "goal int4: batch-1 decode <= 40% of bf16's: NOT met (45%)" in text


def test_with_stored_weights_recomputes_the_roofline(bench):
    throughput, _ = bench
    model = _tiny()
    quantize(model, "int8")
    row = dict(ms_step=2.0, bytes_step=throughput.param_bytes(model) + 1000, roofline_frac=9.9)
    out = throughput.with_stored_weights(row, model, bandwidth=1e9)
    assert out["bytes_step"] == throughput.stored_bytes(model) + 1000
    assert out["roofline_frac"] == pytest.approx(out["bytes_step"] / 1e9 / 2e-3)
    assert throughput.with_stored_weights(dict(error="x"), model, 1e9) == dict(error="x")


def test_quant_quality_end_to_end(bench, tmp_path, capsys):
    _, quality = bench
    run = tmp_path / "run"
    final = run / "final"
    final.mkdir(parents=True)
    tok = write_tokenizer(final)
    _tiny(tok.get_vocab_size()).save_pretrained(final)
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    state = run / "checkpoint-00000001"
    state.mkdir()
    (state / "trainer_state.json").write_text(json.dumps(
        dict(step=1, args=dict(data=[str(text)], seq_len=16, val_fraction=0.25))))
    out = tmp_path / "q.json"
    quality.main(["--run", str(run), "--max-rows", "3", "--batch-size", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "3 validation rows of 16 tokens" in printed and "int8" in printed and "int4" in printed
    result = json.loads(out.read_text())
    assert result["held_out"]["rows"] == 3 and result["model"] == str(final)
    base, int8 = result["results"]["unquantized"], result["results"]["int8"]
    assert base["tokens"] == int8["tokens"] == 3 * 15
    assert int8["weight_bytes"] < base["weight_bytes"] and int8["quantized_layers"] == int8["decoder_linear_layers"]
    assert 0 <= int8["rel_max_worst"] < 0.1 and int8["top1_agreement"] > 0.9
    assert int8["perplexity_change"] == pytest.approx(int8["perplexity"] / base["perplexity"] - 1)


def test_logit_errors(bench):
    _, quality = bench
    ref = [torch.tensor([[[1.0, 2.0, 4.0], [3.0, 0.0, 0.0]]])]
    got = [torch.tensor([[[1.0, 2.5, 4.0], [0.0, 3.5, 0.0]]])]
    e = quality.logit_errors(ref, got)
    assert e["max_abs"] == 3.5 and e["rel_max_worst"] == pytest.approx(3.5 / 4)
    assert e["top1_agreement"] == 0.5
