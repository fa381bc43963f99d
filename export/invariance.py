"""Batch invariance: does a text get the same answer alone as inside a full batch of others?

Dynamic int8 quantization computes one activation scale over a whole batch tensor, padding
included, so a text's answer moves with its batch-mates. The parity gate runs every exported
variant through this check: each held-out text (or window) alone, then inside full batches of
random other held-out texts of mixed lengths, padded to the longest member as the runtime pads
(`Pipeline.forward`), and both answers through the task's own post-processing. It records the
worst alone-vs-batched cosine (embeddings), the largest probability change and label flips
(classification), changed values (regression) and changed spans (NER, QA), and a variant passes
when embeddings keep `min_cosine` and nothing changes more often than in the fp32 variant
(the float baseline: fp32 can flip only on exact ties) plus `max_extra_changes`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bertserve.runtime import Pipeline

log = logging.getLogger(__name__)
BASELINE = "fp32"


@dataclass(frozen=True)
class InvarianceGate:
    """The gate's bar (`bertserve export --min-batch-cosine / --max-batch-changes`)."""

    min_cosine: float = 0.999  # worst alone-vs-batched cosine an embedding may have
    max_extra_changes: int = 0  # label flips / changed spans allowed beyond the fp32 baseline
    batch_size: int = 32  # texts per batch
    samples: int = 1000  # held-out inputs measured (all of them when fewer)
    seed: int = 0


def _flat(outputs: Any) -> list[np.ndarray]:
    if isinstance(outputs, np.ndarray):
        return list(outputs)
    return [np.concatenate([r.reshape(-1) for r in w.rows]) for w in outputs]


def measure(pipe: Pipeline, inputs: Sequence[Any], batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Each input alone (each of its windows in a pass of its own) against inside full batches
    of random other inputs' windows; the answers compared after the task's post-processing."""
    features = pipe.featurize(inputs)
    items = [item for group in features for item in group]
    alone = [pipe.forward([item])[0] for item in items]
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(items))]
    batched: list[np.ndarray | None] = [None] * len(items)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        filler: list[int] = []
        if len(chunk) < batch_size and len(items) > len(chunk):  # the last batch is filled up too
            taken = set(chunk)
            others = [i for i in order if i not in taken]
            filler = [int(i) for i in rng.choice(others, min(len(others), batch_size - len(chunk)), replace=False)]
        rows = pipe.forward([items[i] for i in chunk + filler])
        for i, row in zip(chunk, rows, strict=False):
            batched[i] = row
    out_alone = pipe.assemble(inputs, features, alone)
    out_batched = pipe.assemble(inputs, features, batched)  # type: ignore[arg-type]
    a = pipe.spec.postprocess(out_alone, pipe.card)
    b = pipe.spec.postprocess(out_batched, pipe.card)
    report = compare(a, b, pipe.spec.agree)
    raw = [float(np.max(np.abs(x - y))) if x.size else 0.0
           for x, y in zip(_flat(out_alone), _flat(out_batched), strict=True)]
    report.update(inputs=len(inputs), windows=len(items), batch_size=batch_size,
                  max_abs_output_diff=max(raw, default=0.0))
    return report


def compare(alone: Sequence[dict[str, Any]], batched: Sequence[dict[str, Any]],
            agree: Any = None) -> dict[str, Any]:
    """Alone-vs-batched answers: `changed` counts inputs whose answer differs (a label flip, a
    changed label set, value, entity list or answer span); embeddings report cosines. Answers of
    another shape (a task registered elsewhere) are compared with the task's own `agree`."""
    if not alone:
        return {"kind": "none", "changed": 0}
    first = alone[0]
    pairs = list(zip(alone, batched, strict=True))
    if "embedding" in first:
        cos = np.array([float(np.dot(x["embedding"], y["embedding"])) for x, y in pairs])
        return {"kind": "embedding", "changed": 0, "min_cosine": float(cos.min()),
                "mean_cosine": float(cos.mean()), "median_cosine": float(np.median(cos))}
    if "value" in first:
        diff = [abs(x["value"] - y["value"]) for x, y in pairs]
        changed = sum(d > 1e-2 * max(1.0, abs(x["value"])) for d, (x, _) in zip(diff, pairs, strict=True))
        return {"kind": "value", "changed": int(changed), "max_abs_value_diff": float(max(diff))}
    if "scores" in first:  # single- or multi-label classification
        key = "labels" if "labels" in first else "label"
        delta = max(abs(p - y["scores"][k]) for x, y in pairs for k, p in x["scores"].items())
        flips = sum(x[key] != y[key] for x, y in pairs)
        return {"kind": "label", "changed": int(flips), "label_flips": int(flips), "max_abs_prob_diff": float(delta)}
    if "entities" in first:
        def spans(r: dict[str, Any]) -> list[tuple[int, int, str]]:
            return [(e["start"], e["end"], e["entity_group"]) for e in r["entities"]]

        changed = sum(spans(x) != spans(y) for x, y in pairs)
        return {"kind": "spans", "changed": int(changed), "span_changes": int(changed)}
    if "answer" in first:
        def span(r: dict[str, Any]) -> tuple[Any, ...]:
            return (r.get("start"), r.get("end"), r.get("no_answer", False))

        changed = sum(span(x) != span(y) for x, y in pairs)
        return {"kind": "spans", "changed": int(changed), "span_changes": int(changed)}
    if agree is not None:
        changed = sum(not agree(x, y) for x, y in pairs)
        return {"kind": "answers", "changed": int(changed)}
    raise ValueError(f"cannot compare results with keys {sorted(first)}")


def check(report: dict[str, Any], pipelines: dict[str, Pipeline], inputs: Sequence[Any],
          gate: InvarianceGate, skip: Sequence[str] = ("pytorch",)) -> dict[str, Any]:
    """Measure every variant (not the PyTorch reference), record `invariance` in each variant's
    parity report and fold its verdict into the variant's `passed`. Returns the gate's summary."""
    if len(inputs) > gate.samples:
        chosen = np.random.default_rng(gate.seed).choice(len(inputs), gate.samples, replace=False)
        inputs = [inputs[int(i)] for i in sorted(chosen)]
    variants = report["variants"]
    for name, pipe in pipelines.items():
        if name in skip:
            continue
        variants[name]["invariance"] = measure(pipe, inputs, gate.batch_size, gate.seed)
    baseline = variants.get(BASELINE, {}).get("invariance", {}).get("changed", 0)
    for name, info in variants.items():
        inv = info.get("invariance")
        if inv is None:
            continue
        reasons = []
        if inv["kind"] == "embedding" and inv["min_cosine"] < gate.min_cosine:
            reasons.append(f"an embedding alone vs batched has cosine {inv['min_cosine']:.5f}, "
                           f"under --min-batch-cosine {gate.min_cosine:g}")
        if inv["changed"] > baseline + gate.max_extra_changes:
            what = "label flips" if inv["kind"] == "label" else "changed answers"
            reasons.append(f"{inv['changed']} of {inv['inputs']} answers change with their batch-mates "
                           f"({what}; fp32: {baseline}, --max-batch-changes {gate.max_extra_changes})")
        inv["passed"] = not reasons
        if reasons:
            inv["failure"] = "; ".join(reasons)
        info["passed"] = bool(info["passed"]) and inv["passed"]
        log.info("invariance %-7s %s %s", name, _summary(inv), "ok" if inv["passed"] else "FAILED: " + inv["failure"])
    summary = {**asdict(gate), "inputs": len(inputs), "baseline_changes": baseline}
    report["invariance"] = summary
    return summary


def _summary(inv: dict[str, Any]) -> str:
    if inv["kind"] == "embedding":
        return f"min cosine {inv['min_cosine']:.6f} (mean {inv['mean_cosine']:.6f})"
    extra = f", max |dprob| {inv['max_abs_prob_diff']:.4f}" if "max_abs_prob_diff" in inv else ""
    return f"{inv['changed']}/{inv['inputs']} changed{extra}"


def failure(info: dict[str, Any]) -> str | None:
    """Why a variant failed the invariance check, or None."""
    inv = info.get("invariance") or {}
    return inv.get("failure")
