"""`bertserve bench`: the pipeline baseline and the runtime path on the same inputs, reports written."""

from __future__ import annotations

import json

import pytest

from bertserve.errors import ConfigError
from bertserve.variants import int8_for, machine_isa
from bertserve_cli import main
from export.bench import encoder_flops, run_bench, scratch_model

INT8_HERE = int8_for(machine_isa())  # the int8 build bench times on this CPU


def test_encoder_flops_count_projections_feed_forward_and_attention():
    config = {"hidden_size": 4, "num_hidden_layers": 2, "intermediate_size": 8}
    # per layer: Q, K, V, output (4 x 4x4) + up/down (2 x 4x8) multiply-adds per token, x2 FLOPs,
    # plus QK^T and probabilities.V: 2 x n x n x d multiply-adds
    n = 3
    per_layer = 2 * n * (4 * 16 + 2 * 32) + 2 * 2 * n * n * 4
    assert encoder_flops(config, n) == 2 * per_layer


def test_bench_times_every_path_on_the_same_inputs(trained_single, sentiment_files, tmp_path, capsys):
    code = main(["bench", "--task", "classification", "--model", str(trained_single), "--data",
                 str(sentiment_files["test"]), "--limit", "40", "--output-dir", str(tmp_path), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"] == 40 and summary["windows"] == 40 and summary["task"] == "classification"
    assert set(summary["paths"]) == {"pipeline", "onnx_fp32", f"onnx_{INT8_HERE}"}
    assert summary["paths"]["pipeline"]["speedup_vs_pipeline"] == 1.0
    for row in summary["paths"].values():
        assert row["seq_per_s"] > 0 and row["gflops"] > 0 and row["share_of_matmul_peak"] > 0
        assert row["seq_per_s"] == pytest.approx(40 / row["seconds"], rel=0.02)
    assert summary["matmul_gflops"] > 0
    saved = json.loads((tmp_path / summary["reports"]["json"].split("/")[-1]).read_text())
    assert saved["paths"] == summary["paths"]
    assert f"| onnx_{INT8_HERE} (cpu) |" in (tmp_path / summary["reports"]["markdown"].split("/")[-1]).read_text()


def test_bench_prints_a_table_without_json(trained_single, sentiment_files, tmp_path, capsys):
    assert main(["bench", "--task", "classification", "--model", str(trained_single), "--data",
                 str(sentiment_files["test"]), "--limit", "10", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| path | seq/s | x pipeline |" in out and "| pipeline (cpu) |" in out


def test_bench_without_data_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTSERVE_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="BERTSERVE_DATA_DIR"):
        run_bench("classification")


def test_bench_refuses_a_model_of_another_task(trained_single, sentiment_files):
    with pytest.raises(ConfigError, match="classification model, not ner"):
        run_bench("ner", model=str(trained_single), data=str(sentiment_files["test"]))


def test_scratch_model_is_a_trained_directory_layout(tiny_base, tmp_path):
    from bertserve.artifact import read_card

    out = scratch_model("classification", str(tiny_base), tmp_path / "m")
    card = read_card(out)
    assert card.task == "classification" and card.labels == ["negative", "positive"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_bench_times_a_pair_model_on_pairs(trained_pairs, tmp_path, capsys):
    from tests.conftest import cross_pair_rows, write_jsonl

    data = write_jsonl(tmp_path / "pairs.jsonl", cross_pair_rows(30, seed=20))
    assert main(["bench", "--task", "classification", "--model", str(trained_pairs), "--data", str(data),
                 "--output-dir", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"] == summary["windows"] == 30
    assert set(summary["paths"]) == {"pipeline", "onnx_fp32", f"onnx_{INT8_HERE}"}


def test_bench_rerank_scenario_is_one_query_with_50_candidates(trained_rerank, rerank_files, tmp_path, capsys):
    assert main(["bench", "--task", "rerank", "--model", str(trained_rerank), "--data", str(rerank_files["train"]),
                 "--output-dir", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["windows"] == 50 * summary["inputs"] and summary["inputs"] == 240 // 50
    assert set(summary["paths"]) == {"pipeline", "onnx_fp32", f"onnx_{INT8_HERE}"}
    for row in summary["paths"].values():
        assert row["windows_per_s"] == pytest.approx(50 * row["seq_per_s"], rel=0.02)
