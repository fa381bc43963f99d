"""The quality gate: a model that does no better than one that learned nothing is not published.

The parity gate proves that ONNX answers like PyTorch; it says nothing about whether PyTorch answers
well. A classifier trained too briefly on a few hundred imbalanced examples predicts the majority
class for everything, and its accuracy looks fine. Here the model's validation metric is set
against what a model that learned nothing scores on the same examples (the task's `baseline`:
always the majority class, a guess by the class frequencies, always the mean), and a class the
validation data holds that the model never predicts is named. Training warns; export (and
`bertserve fit`) refuse, unless `--allow-weak`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from bertserve.errors import WeakModelError
from bertserve.registry import get_task

log = logging.getLogger(__name__)

# The model must close this share of the gap between the baseline and a perfect score: on a binary
# task with 87 % of one class (macro-F1 baseline 0.5) that is macro-F1 0.55; for MSE, 10 % below
# the mean's (R² 0.1). Small validation sets are noisy, so the margin is a floor, not a target.
MARGIN = 0.1

ADVICE = (
    "what to try: more training data (especially of the rarer classes); class weights "
    "(--class-weights balanced); a higher learning rate (--learning-rate 1e-4 or 2e-4); more epochs "
    "(--epochs 10); or check that --label-column is the right column. To publish it anyway, pass "
    "--allow-weak"
)


def assess(card: Any, results: Sequence[dict[str, Any]], gold: Sequence[Any]) -> dict[str, Any] | None:
    """The model's validation metric against its task's baseline, and whether it is weak. None when
    the task has no baseline (NER, QA, similarity, rerank: not gated)."""
    spec = get_task(card.task)
    if spec.baseline is None or not results:
        return None
    found = spec.baseline(results, gold, card)
    value, base, best = found["value"], found["baseline"], found["best"]
    higher = bool(found.get("higher_is_better", True))
    required = base + MARGIN * (best - base)
    reasons: list[str] = []
    if (base >= best) if higher else (base <= best):  # e.g. one class in validation: a constant is perfect
        note = f"not assessed: {found['baseline_answer']} already scores {found['metric']} {base:.4g}"
        return {**found, "required": required, "weak": False, "reasons": [], "note": note,
                "examples": len(results)}
    if (value < required) if higher else (value > required):
        than = "above" if higher else "below"
        reasons.append(f"validation {found['metric']} {value:.4g} is not clearly {than} the "
                       f"{base:.4g} of {found['baseline_answer']} (needs {required:.4g} or "
                       f"{'more' if higher else 'less'})")
    never = found.get("never_predicted") or []
    if never:
        listed = ", ".join(f"{name!r}" for name in never[:5])
        reasons.append(f"it never predicts {listed}, present in the validation data")
    return {**found, "required": round(required, 6), "weak": bool(reasons), "reasons": reasons,
            "examples": len(results)}


def message(quality: dict[str, Any], where: str = "the model") -> str:
    """Why the model is weak and what to try, in one paragraph."""
    return f"{where} is weak: {'; '.join(quality['reasons'])}. {ADVICE}"


def gate(quality: dict[str, Any] | None, allow_weak: bool, where: str = "the model") -> None:
    """Refuse a weak model (WeakModelError with the advice) unless `allow_weak`; then only warn."""
    if quality is None or not quality["weak"]:
        return
    if not allow_weak:
        raise WeakModelError(message(quality, where) + " (on export and fit)")
    log.warning("publishing a weak model (--allow-weak): %s", "; ".join(quality["reasons"]))


def warn(quality: dict[str, Any] | None, where: str) -> None:
    """What training says when it ends with a weak model."""
    if quality is not None and quality["weak"]:
        log.warning("%s; export and fit will refuse to publish it", message(quality, where))
