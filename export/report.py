"""`bertserve report` and the report export writes: the model's whole story on one page.

Export calls `write_report` with what its parity gate already computed (the held-out examples'
answers from PyTorch and every variant) plus a latency sweep, and stores `report.json` and the
drawn `report.html` in the artifact (published with it; the service serves the page). `bertserve
report` re-draws a published model's page, or builds one for a training directory from PyTorch's
answers on its validation split (no parity or latency before export).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bertserve.artifact import ONNX_FILE, ModelCard, read_card
from bertserve.errors import ArtifactError
from bertserve.report import HISTORY_FILE, REPORT_HTML, REPORT_JSON, Report, build
from bertserve.runtime import Pipeline

log = logging.getLogger(__name__)
LATENCY_INPUTS = 24  # inputs timed per variant, spread over the lengths of the held-out data
LATENCY_REPEATS = 3  # runs per input; the fastest counts


def input_tokens(pipeline: Pipeline, x: Any) -> int:
    """Tokens the model reads for one input (all its windows)."""
    return sum(item.n_tokens for item in pipeline.featurize([x])[0])


def measure_latency(pipelines: dict[str, Pipeline], inputs: Sequence[Any], n: int = LATENCY_INPUTS,
                    repeats: int = LATENCY_REPEATS) -> dict[str, list[list[float]]]:
    """variant -> [[tokens, ms], ...]: `n` inputs from the shortest to the longest, each alone."""
    if not inputs:
        return {}
    first = next(iter(pipelines.values()))
    lengths = sorted((input_tokens(first, x), i) for i, x in enumerate(inputs))
    picked = sorted({lengths[round(k * (len(lengths) - 1) / max(1, n - 1))] for k in range(min(n, len(lengths)))})
    out: dict[str, list[list[float]]] = {}
    for name, pipe in pipelines.items():
        pipe.outputs([inputs[picked[0][1]]], batch_size=1)  # warm-up
        points = []
        for tokens, i in picked:
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                pipe.outputs([inputs[i]], batch_size=1)
                best = min(best, time.perf_counter() - started)
            points.append([tokens, round(1000 * best, 3)])
        out[name] = points
    return out


def read_history(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_report(directory: Path, report: Report) -> Path:
    """`report.json` (the content) and `report.html` (the page) into `directory`."""
    from export.report_html import render

    directory.mkdir(parents=True, exist_ok=True)
    (directory / REPORT_JSON).write_text(report.dumps())
    page = directory / REPORT_HTML
    page.write_text(render(report), encoding="utf-8")
    return page


def export_report(card: ModelCard, name: str, source: Path, inputs: Sequence[Any], gold: Sequence[Any],
                  answers: Mapping[str, Sequence[dict[str, Any]]], latency: dict[str, list[list[float]]],
                  total_examples: int) -> Report:
    """The report of an export (the gate's inputs and gold): quality from the chosen variant's
    answers, parity from all."""
    return build(card, name, history=read_history(source), inputs=inputs, gold=gold, answers=answers,
                 shown=card.variant or "pytorch", latency=latency, total_examples=total_examples)


def training_report(model_dir: Path, card: ModelCard, limit: int) -> Report:
    """A training directory's report: PyTorch's answers on its validation split (sampled)."""
    from bertserve.data import Columns, load_task_examples
    from bertserve.registry import get_task
    from training.common import VALIDATION_FILE
    from training.predict import torch_pipeline

    examples: list[dict[str, Any]] = []
    if (model_dir / VALIDATION_FILE).is_file():
        examples = load_task_examples(card.task, str(model_dir / VALIDATION_FILE), Columns(file_format="jsonl"))
    total = len(examples)
    if total > limit:
        examples = random.Random(0).sample(examples, limit)
    inputs, gold = get_task(card.task).split_examples(examples)
    answers = {"pytorch": torch_pipeline(model_dir, card).predict(inputs)} if inputs else {"pytorch": []}
    return build(card, model_dir.resolve().name, history=read_history(model_dir), inputs=inputs, gold=gold,
                 answers=answers, shown="pytorch", total_examples=total)


def report_command(ref: str, output: str | None, limit: int = 2000) -> dict[str, Any]:
    """`bertserve report MODEL_OR_TAG`: the page of a training directory, an exported artifact or a
    published tag, written to `output` (default reports/<name>/)."""
    from bertserve.evaluate import model_path

    started = time.perf_counter()
    directory = model_path(ref)
    card = read_card(directory)
    if (directory / REPORT_JSON).is_file():
        report = Report.from_dict(json.loads((directory / REPORT_JSON).read_text())).redrawn()
    elif (directory / ONNX_FILE).is_file():
        raise ArtifactError(f"{ref} was exported before bertserve wrote model reports: export its training "
                            "directory again (`bertserve export DIR`), or run `bertserve report DIR` on that directory")
    else:
        report = training_report(directory, card, limit)
    out = Path(output or Path("reports") / _safe(report.name))
    page = write_report(out, report)
    seconds = time.perf_counter() - started
    log.info("report of %s written to %s in %.1f s", ref, page, seconds)
    return {"report": str(page), "seconds": round(seconds, 2), "warnings": report.warnings}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"
