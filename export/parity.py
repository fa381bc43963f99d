"""The parity gate: held-out data through PyTorch and every ONNX variant, with the service's own
post-processing, and a report of what each variant would cost users in metric and agreement."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.runtime import Pipeline, Windows

log = logging.getLogger(__name__)
REFERENCE = "pytorch"


def _agreement(agree: Any, a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> float:
    """Fraction of inputs where the variant answers as PyTorch does, by the task's own measure
    (`TaskSpec.agree`: the same label, value, entities, answer span, or a close embedding)."""
    return float(np.mean([agree(x, y) for x, y in zip(a, b, strict=True)])) if a else 1.0


def _flat(outputs: np.ndarray | list[Windows]) -> np.ndarray:
    """All output values in one array, whether one row per input or windows per input."""
    if isinstance(outputs, np.ndarray):
        return outputs.reshape(-1)
    return np.concatenate([row.reshape(-1) for w in outputs for row in w.rows])


def run_parity(pipelines: dict[str, Pipeline], examples: Sequence[dict[str, Any]], max_metric_drop: float,
               batch_size: int = 32, answers: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """`pipelines` maps variant name -> pipeline and must include "pytorch" (the reference).
    `answers`, when given, receives each variant's results (the model report shows them)."""
    ref = pipelines[REFERENCE]
    spec, card = ref.spec, ref.card
    texts, gold = spec.split_examples(examples)
    metric = card.primary_metric
    outputs: dict[str, np.ndarray | list[Windows]] = {}
    variants: dict[str, dict[str, Any]] = {}
    for name, pipe in pipelines.items():
        started = time.perf_counter()
        outputs[name] = pipe.outputs(texts, batch_size=batch_size)
        seconds = time.perf_counter() - started
        results = spec.postprocess(outputs[name], card)
        metrics = spec.score(results, gold, card)
        variants[name] = {
            "metrics": metrics,
            "seconds": round(seconds, 3),
            "ms_per_example": round(1000 * seconds / max(1, len(texts)), 3),
            "_results": results,
        }
    reference = variants[REFERENCE]
    for name, info in variants.items():
        drop = (reference["metrics"][metric] - info["metrics"][metric]) * spec.points_per_unit
        info["metric_drop_points"] = round(drop, 4)
        info["agreement"] = round(_agreement(spec.agree, reference["_results"], info["_results"]), 5)
        info["max_abs_logit_diff"] = float(np.max(np.abs(_flat(outputs[name]) - _flat(outputs[REFERENCE]))))
        if spec.parity_measures is not None:
            info.update(spec.parity_measures(reference["_results"], info["_results"]))
        info["passed"] = drop <= max_metric_drop
    for name, info in variants.items():
        results = info.pop("_results")
        if answers is not None:
            answers[name] = results
    report = {"metric": metric, "examples": len(texts), "max_metric_drop": max_metric_drop, "variants": variants}
    for name, info in variants.items():
        log.info("parity %-7s %s=%.4f drop=%.2f pts agreement=%.4f max|dlogit|=%.4f %.2f ms/ex %s",
                 name, metric, info["metrics"][metric], info["metric_drop_points"], info["agreement"],
                 info["max_abs_logit_diff"], info["ms_per_example"], "ok" if info["passed"] else "FAILED")
    return report
