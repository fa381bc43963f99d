"""Batch invariance: the parity gate's check that a text's answer does not depend on its batch-mates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bertserve.artifact import ONNX_FILE, TOKENIZER_FILE, read_card
from bertserve.errors import ParityError
from bertserve.runtime import Pipeline
from export import invariance
from export.invariance import InvarianceGate, compare, measure
from export.parity import run_parity
from export.pipeline import choose


class PaddingDependent:
    """A backend whose answers move with the batch: every output is shifted by how much padding
    the batch adds (as dynamic int8's batch-wide activation scale moves answers, only louder)."""

    def __init__(self, inner, shift: float):
        self.inner, self.shift = inner, shift
        self.input_names = inner.input_names

    def logits(self, feeds):
        out = self.inner.logits(feeds)
        padding = (feeds["attention_mask"] == 0).sum(axis=1).astype(np.float32)  # per row
        out = out.copy()
        out[..., 0] += self.shift * padding.reshape((-1,) + (1,) * (out.ndim - 2))
        return out


def _mixed(path: Path) -> list[dict]:
    """The test rows at mixed lengths (1 to 13 words more), so batches carry padding."""
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{**row, "text": row["text"] + " and the plot" * (i % 5)} for i, row in enumerate(rows)]


def test_default_int8_is_batch_invariant(published_single):
    """The published (per-token int8) model's report: invariance measured, passed, no flips, and its
    outputs alone and batched identical to float rounding."""
    card = read_card(published_single["artifact"])
    assert card.variant.startswith("int8"), card.parity["variants"]["int8"]
    assert all(q.startswith("per-token") for q in card.training["export"]["quantization"].values())
    assert card.parity["invariance"]["min_cosine"] == 0.999
    for name in ("fp32", "int8"):
        inv = card.parity["variants"][name]["invariance"]
        assert inv["passed"] and inv["kind"] == "label" and inv["label_flips"] == 0
        assert inv["inputs"] == card.parity["examples"]
        assert inv["max_abs_output_diff"] <= 1e-5, (name, inv)
    assert "invariance" not in card.parity["variants"]["pytorch"]  # the reference is not served


def test_dynamic_int8_moves_with_batch_mates_and_per_token_does_not(published_single, sentiment_files, tmp_path):
    """The cause, on the tiny model: onnxruntime's dynamic int8 (one activation scale per batch
    tensor) changes a text's logits with its batch-mates; per-token scales do not."""
    from export import onnx as onnx_steps

    work = Path(published_single["artifact"]).parent
    card = read_card(published_single["artifact"])
    texts = [row["text"] for row in _mixed(sentiment_files["test"])]
    diffs = {}
    for method in ("dynamic", "per-token"):
        out = tmp_path / method
        onnx_steps.quantize(work / "raw", out, method)
        shutil.copy2(work / "raw" / TOKENIZER_FILE, out / TOKENIZER_FILE)
        assert (out / ONNX_FILE).is_file()
        diffs[method] = measure(Pipeline.from_artifact(out, card), texts, batch_size=32)["max_abs_output_diff"]
    assert diffs["dynamic"] > 1e-4, diffs
    assert diffs["per-token"] <= 1e-5, diffs


def test_gate_fails_a_batch_dependent_variant_and_falls_back_to_fp32(published_single, trained_single,
                                                                      sentiment_files):
    from training.predict import torch_pipeline

    artifact = Path(published_single["artifact"])
    card = read_card(artifact)
    good = Pipeline.from_artifact(artifact, card)
    bad = Pipeline(card, good.encoder, PaddingDependent(good.backend, shift=0.8))
    pipelines = {"pytorch": torch_pipeline(trained_single), "fp32": good, "int8": bad}
    examples = _mixed(sentiment_files["test"])
    report = run_parity(pipelines, examples, max_metric_drop=100.0)  # the metric alone would pass it
    assert report["variants"]["int8"]["passed"]
    invariance.check(report, pipelines, [ex["text"] for ex in examples], InvarianceGate())
    inv = report["variants"]["int8"]["invariance"]
    assert inv["label_flips"] > 0 and not inv["passed"]
    assert report["variants"]["fp32"]["invariance"]["label_flips"] == 0
    assert not report["variants"]["int8"]["passed"] and report["variants"]["fp32"]["passed"]
    assert choose(report, "auto", gpu=False) == "fp32"
    assert "change with their batch-mates (label flips; fp32: 0" in report["fallback"]
    with pytest.raises(ParityError, match=r"refusing to publish int8: .* answers change with their batch-mates"):
        choose(report, "int8", gpu=False)
    # allowing the flips (--max-batch-changes) lets it through: the bar is the option's
    report["variants"]["int8"]["passed"] = True
    invariance.check(report, {"int8": bad}, [ex["text"] for ex in examples],
                     InvarianceGate(max_extra_changes=inv["label_flips"]))
    assert report["variants"]["int8"]["invariance"]["passed"]


def test_gate_fails_embeddings_under_the_cosine_bar(published_similarity, trained_similarity):
    artifact = Path(published_similarity["artifact"])
    card = read_card(artifact)
    good = Pipeline.from_artifact(artifact, card)
    bad = Pipeline(card, good.encoder, PaddingDependent(good.backend, shift=0.05))
    texts = [f"{w} film and story" for w in ("good", "bad", "the very long and really boring plot of it", "a")] * 10
    report = {"variants": {"fp32": {"passed": True}, "int8": {"passed": True}}}
    invariance.check(report, {"fp32": good, "int8": bad}, texts, InvarianceGate(batch_size=8))
    fp32, int8 = (report["variants"][n]["invariance"] for n in ("fp32", "int8"))
    assert fp32["passed"] and fp32["min_cosine"] >= 0.99999
    assert not int8["passed"] and int8["min_cosine"] < 0.999
    assert "under --min-batch-cosine 0.999" in int8["failure"]
    assert not report["variants"]["int8"]["passed"]


def test_compare_counts_changed_answers_of_each_kind():
    a = [{"entities": [{"start": 0, "end": 4, "entity_group": "PER"}]}, {"entities": []}]
    b = [{"entities": [{"start": 0, "end": 5, "entity_group": "PER"}]}, {"entities": []}]
    assert compare(a, b) == {"kind": "spans", "changed": 1, "span_changes": 1}
    qa = [{"answer": "x", "start": 1, "end": 2}, {"answer": "y", "start": 3, "end": 4}]
    assert compare(qa, qa)["changed"] == 0
    assert compare(qa, [qa[0], {"answer": "", "start": 0, "end": 0, "no_answer": True}])["changed"] == 1
    v = compare([{"value": 1.0}, {"value": 3.0}], [{"value": 1.001}, {"value": 3.5}])
    assert v["changed"] == 1 and v["max_abs_value_diff"] == pytest.approx(0.5)
    multi = compare([{"labels": ["a"], "scores": {"a": 0.6, "b": 0.1}}],
                    [{"labels": ["a", "b"], "scores": {"a": 0.6, "b": 0.55}}])
    assert multi["label_flips"] == 1 and multi["max_abs_prob_diff"] == pytest.approx(0.45)
