from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from bertserve.artifact import ONNX_FILE, read_card, verify_files
from bertserve.errors import ArtifactError, ParityError
from bertserve.store import list_published, resolve
from bertserve.variants import machine_isa
from export.pipeline import choose, export_model
from training.predict import evaluate


def test_export_publishes_a_parity_checked_variant(published_single):
    assert published_single["variant"] in ("int8", "int8-vnni", "fp32")
    vnni = machine_isa() in ("vnni", "arm64")  # int8-vnni is built where it is computed exactly
    assert set(published_single["parity"]) == {"pytorch", "fp32", "int8"} | ({"int8-vnni"} if vnni else set())
    tags = [row["tag"] for row in list_published("classification")]
    assert published_single["tag"] in tags


def test_artifact_carries_card_parity_and_checksums(published_single):
    artifact = Path(published_single["artifact"])
    card = read_card(artifact)
    # the other int8 build (7-bit weights) beside a VNNI machine's choice; on other CPUs int8 alone
    others = [f"{v}.onnx" for v in card.variants or {} if v not in (card.variant, "fp32")]
    assert others == (["int8.onnx"] if card.variant == "int8-vnni" else [])
    assert sorted(p.name for p in artifact.iterdir()) == sorted([
        "bertserve.json", "model.onnx", "reference.onnx", *others, "report.html", "report.json", "tokenizer.json"])
    assert card.variant == published_single["variant"]
    report = card.parity
    assert report["metric"] == "macro_f1" and report["examples"] > 0
    for name in ("pytorch", "fp32", "int8"):
        variant = report["variants"][name]
        assert {"metrics", "metric_drop_points", "agreement", "max_abs_logit_diff", "ms_per_example"} <= set(variant)
    # fp32 ONNX answers as PyTorch does
    assert report["variants"]["fp32"]["agreement"] == 1.0
    assert report["variants"]["fp32"]["max_abs_logit_diff"] < 1e-3
    verify_files(artifact, card)  # does not raise


def test_store_copy_is_what_was_checked(published_single):
    tag, path, card = resolve("classification", published_single["tag"])
    assert tag == published_single["tag"]
    verify_files(path, card)


def test_changed_or_truncated_file_is_refused(published_single, tmp_path):
    artifact = tmp_path / "a"
    shutil.copytree(published_single["artifact"], artifact)
    card = read_card(artifact)
    data = (artifact / ONNX_FILE).read_bytes()
    (artifact / ONNX_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"model\.onnx does not match the checksum"):
        verify_files(artifact, card)
    (artifact / ONNX_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx is missing"):
        verify_files(artifact, card)


def _report(int8_passes: bool) -> dict:
    def variant(passed: bool, drop: float) -> dict:
        return {"passed": passed, "metric_drop_points": drop}

    return {"metric": "accuracy", "max_metric_drop": 1.0, "variants": {
        "pytorch": variant(True, 0.0), "fp32": variant(True, 0.0),
        "int8": variant(int8_passes, 0.2 if int8_passes else 3.5)}}


def test_gate_prefers_int8_and_falls_back_to_fp32():
    assert choose(_report(True), "auto", gpu=False) == "int8"
    assert choose(_report(False), "auto", gpu=False) == "fp32"


def test_gate_refuses_a_requested_variant_that_fails():
    with pytest.raises(ParityError, match=r"refusing to publish int8: accuracy drops by 3\.50 points"):
        choose(_report(False), "int8", gpu=False)
    failing = copy.deepcopy(_report(False))
    failing["variants"]["fp32"]["passed"] = False
    with pytest.raises(ParityError, match="no variant passed"):
        choose(failing, "auto", gpu=False)


def test_exporting_an_artifact_is_refused(published_single):
    with pytest.raises(ArtifactError, match="already an exported artifact"):
        export_model(published_single["artifact"], publish=False, output="/tmp/never")


def test_evaluate_trained_and_published_agree(trained_single, published_single, sentiment_files):
    from bertserve.data import Columns

    torch_metrics = evaluate(str(trained_single), str(sentiment_files["test"]), Columns())
    onnx_metrics = evaluate(published_single["tag"], str(sentiment_files["test"]), Columns())
    assert torch_metrics["variant"] == "pytorch" and onnx_metrics["variant"] == published_single["variant"]
    assert abs(torch_metrics["metrics"]["accuracy"] - onnx_metrics["metrics"]["accuracy"]) <= 0.02


def test_int8_keeps_attention_products_in_fp32(published_single, trained_single):
    """Q.K^T and probabilities.V have no weight operand: they stay fp32, every weight MatMul is int8."""
    import json

    import onnx

    from export.onnx import activation_matmuls

    work = Path(published_single["artifact"]).parent
    kept = activation_matmuls(work / "raw" / ONNX_FILE)
    layers = json.loads((trained_single / "config.json").read_text())["num_hidden_layers"]
    assert len(kept) == 2 * layers
    ops = {node.name: node.op_type for node in onnx.load(str(work / "int8" / ONNX_FILE)).graph.node}
    assert all(ops[name] == "MatMul" for name in kept)
    assert "MatMul" not in {op for name, op in ops.items() if name not in kept}
    assert sum(op == "MatMulInteger" for op in ops.values()) >= 6 * layers  # Q, K, V, output, two FFN
    # back to float by Cast and Mul: onnxruntime's int32 per-axis DequantizeLinear is slow
    assert "DequantizeLinear" not in ops.values()
