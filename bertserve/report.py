"""The model report's content: what a person needs to decide whether a model is good enough to ship
(training curves, quality, parity, latency), as plain data — plots and tables, nothing drawn.

Export builds it from the parity gate's own answers (the held-out examples through PyTorch and
every variant) and stores it with the artifact (`report.json`, drawn as `report.html` by
`export/report_html.py`; the service serves that page). `bertserve report` builds it for a
training directory from PyTorch's answers. Each task adds its quality section through
`TaskSpec.report` (confusion matrix, threshold curves, per-type F1, ...), so this module knows no
task. Torch- and matplotlib-free: the task modules and the service import it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
HISTORY_FILE = "training_history.json"  # training writes it into the model directory
MAX_ROWS = 15  # examples listed per table
MAX_POINTS = 2000  # points per scatter plot
TEXT_CHARS = 300  # characters of an input shown in a table
# the over-fitting warning: validation loss rising for this many evaluations in a row
RISING_EVALS = 3
SHORT_RUN = 0.25  # a time budget that stops training before this share of its steps is warned about


@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float]


@dataclass
class Plot:
    """A chart: `line`, `scatter` or `bar` (x are category names in `categories`), or `heatmap`
    (`matrix` with `categories` on x and `rows` on y)."""

    title: str
    kind: str
    xlabel: str = ""
    ylabel: str = ""
    series: list[Series] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)
    marks: list[list[Any]] = field(default_factory=list)  # vertical lines: [label, x]
    levels: list[list[Any]] = field(default_factory=list)  # horizontal lines: [label, y]
    diagonal: bool = False  # scatter: draw y = x
    logy: bool = False


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


Block = Plot | Table


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Report:
    name: str
    task: str
    summary: list[list[str]]  # [key, value] rows shown at the top
    sections: list[Section]
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    # the training log the Training section was drawn from: a later bertserve re-draws it (`redrawn`)
    history: dict[str, Any] | None = None

    @property
    def warnings(self) -> list[str]:
        return [w for s in self.sections for w in s.warnings]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Report:
        def block(b: dict[str, Any]) -> Block:
            if "columns" in b:
                return Table(**b)
            return Plot(**{**b, "series": [Series(**s) for s in b.get("series", [])]})

        sections = [Section(title=s["title"], blocks=[block(b) for b in s["blocks"]], notes=s["notes"],
                            warnings=s["warnings"]) for s in raw["sections"]]
        return cls(name=raw["name"], task=raw["task"], summary=raw["summary"], sections=sections,
                   created_at=raw["created_at"], history=raw.get("history"))

    def redrawn(self) -> Report:
        """The Training section drawn again from the stored log, with this version's warnings."""
        if self.history is not None:
            self.sections = [training_section(self.history) if s.title == "Training" else s for s in self.sections]
        return self

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=None, default=_json_default) + "\n"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- helpers the task modules use ---------------------------------------------------------------


def clip(value: Any, chars: int = TEXT_CHARS) -> str:
    text = str(value)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def show_input(x: Any) -> str:
    """An input as a person reads it: a text, a pair, a question with its context, a query."""
    if isinstance(x, str):
        return clip(x)
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, str) for t in x):
        return clip(f"{x[0]}  ‖  {x[1]}")
    if isinstance(x, dict):
        return clip("  ·  ".join(f"{k}: {v if isinstance(v, str) else len(v)}" for k, v in x.items()))
    return clip(x)


def show_answer(result: dict[str, Any]) -> str:
    """An answer, compact: numbers rounded, long lists cut."""
    def short(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 3)
        if isinstance(v, dict):
            return {k: short(x) for k, x in list(v.items())[:6]}
        if isinstance(v, (list, tuple)):
            return [short(x) for x in v[:6]] + (["…"] if len(v) > 6 else [])
        if hasattr(v, "tolist"):
            return short(v.tolist())
        return v

    return clip(json.dumps(short(result), default=str, ensure_ascii=False))


def sample_points(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float], str]:
    """At most MAX_POINTS evenly spread points, and a note saying so when some were left out."""
    n = len(xs)
    if n <= MAX_POINTS:
        return [float(v) for v in xs], [float(v) for v in ys], ""
    step = n / MAX_POINTS
    keep = [int(i * step) for i in range(MAX_POINTS)]
    return ([float(xs[i]) for i in keep], [float(ys[i]) for i in keep],
            f"{MAX_POINTS:,} of {n:,} points shown (evenly sampled)")


def prf_table(title: str, rows: Sequence[tuple[str, float, float, float, int]], note: str = "") -> Table:
    """Per-label precision, recall, F1 and support."""
    return Table(title, ["label", "precision", "recall", "F1", "support"],
                 [[name, round(p, 4), round(r, 4), round(f, 4), n] for name, p, r, f, n in rows], note)


def buckets(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """The bucket of each value: i where edges[i] <= value < edges[i+1] (the last one open)."""
    out = []
    for v in values:
        i = 0
        while i + 1 < len(edges) and v >= edges[i + 1]:
            i += 1
        out.append(i)
    return out


# --- the sections every task has ------------------------------------------------------------------


def _metric_key(history: dict[str, Any], entry: dict[str, Any]) -> str | None:
    metric = history.get("metric") or ""
    for key in (metric, f"eval_{metric}"):
        if key in entry and key != "eval_loss":
            return key
    return None


def training_warnings(history: dict[str, Any]) -> list[str]:
    """The beginner mistakes the curves show, in plain words."""
    log = history.get("log") or []
    train = [(e["step"], e["loss"]) for e in log if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log if "eval_loss" in e and "step" in e]
    warnings = []
    bad = [s for s, v in train + evals if not math.isfinite(v)]
    if bad:
        warnings.append(f"The loss became NaN or infinite at step {bad[0]}: training diverged. Lower the learning "
                        "rate (--learning-rate), or check the labels for values the head cannot take.")
    elif len(train) >= 4:
        first, lowest, last = train[0][1], min(v for _, v in train), train[-1][1]
        if last > 2 * lowest and last > first:
            warnings.append(f"The training loss went up from {lowest:.3g} to {last:.3g} by step {train[-1][0]}: "
                            "training is diverging. Lower the learning rate (--learning-rate).")
    # the validation loss where the trainer computes it; else the validation metric (falling = worse)
    watched, what, moved = evals, "validation loss", "rose"
    if not evals:
        watched = [(e["step"], -e[k]) for e in log if "step" in e and (k := _metric_key(history, e)) is not None]
        what, moved = f"validation {history.get('metric')}", "fell"
    rising = 0
    for i in range(1, len(watched)):
        rising = rising + 1 if watched[i][1] > watched[i - 1][1] else 0
        if rising >= RISING_EVALS:
            start, end = watched[i - rising][0], watched[i][0]
            before = [v for s, v in train if s <= start]
            after = [v for s, v in train if start < s <= end]
            if before and after and min(after) < before[-1]:
                warnings.append(
                    f"Over-fitting: the {what} {moved} for {rising} evaluations in a row (steps {start}-{end}) "
                    "while the training loss kept falling: the model is memorising its training examples. The best "
                    f"checkpoint (step {history.get('best_step')}) is the one kept; next time train fewer epochs "
                    "(--epochs), lower the learning rate, or add data.")
                break
    done, planned = history.get("global_step") or 0, history.get("max_steps") or 0
    if planned and done < SHORT_RUN * planned and "time budget" in str(history.get("stop_reason")):
        warnings.append(f"The time budget stopped training after {done} of {planned} planned steps "
                        f"({100 * done / planned:.0f} %): the model has seen a small part of its data and is likely "
                        "far from what it can reach. Give it more time (--max-minutes) or a GPU.")
    metrics = [e[k] for e in log if (k := _metric_key(history, e)) is not None]
    perfect = bool(metrics) and any(abs(metrics[0] - top) < 1e-9 for top in (1.0, 100.0))
    if len(metrics) >= 3 and max(metrics) - min(metrics) < 1e-9 and not perfect:
        warnings.append(f"The validation {history.get('metric')} never moved from {metrics[0]:.4g} in "
                        f"{len(metrics)} evaluations: the model has likely learnt one answer for every input (for "
                        "a classifier, the majority class). Try a higher learning rate, more epochs, class weights "
                        "(--class-weights balanced) or more data.")
    return warnings


def training_section(history: dict[str, Any] | None) -> Section:
    section = Section("Training")
    if not history:
        section.notes.append("No training history was recorded (trained before bertserve wrote "
                             "training_history.json, or packaged with --epochs 0).")
        return section
    log = history.get("log") or []
    best = history.get("best_step")
    marks = [["best checkpoint", best]] if best is not None else []
    train = [(e["step"], e["loss"]) for e in log if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log if "eval_loss" in e and "step" in e]
    loss = Plot("Loss", "line", "step", "loss", marks=marks)
    for name, points in (("training", train), ("validation", evals)):
        if points:
            loss.series.append(Series(name, [p[0] for p in points], [p[1] for p in points]))
    metric_points = [(e["step"], e[k]) for e in log if "step" in e and (k := _metric_key(history, e)) is not None]
    metric = Plot(f"Validation {str(history.get('metric')).removeprefix('validation_')}", "line", "step", str(history.get("metric")), marks=marks,
                  series=[Series(str(history.get("metric")), [p[0] for p in metric_points],
                                 [p[1] for p in metric_points])] if metric_points else [])
    lr_points = [(e["step"], e["learning_rate"]) for e in log if "learning_rate" in e and "step" in e]
    lr = Plot("Learning rate", "line", "step", "learning rate",
              series=[Series("learning rate", [p[0] for p in lr_points], [p[1] for p in lr_points])] if lr_points else [])
    section.blocks = [b for b in (loss, metric, lr) if b.series]
    if not evals:
        section.notes.append("This task's trainer scores validation with its metric only (no validation loss).")
    best_metric = history.get("best_metric")
    section.notes.append(
        f"Best checkpoint: step {best}" + (f" ({history.get('metric')} {best_metric:.4g})" if best_metric is not None else "")
        + f" of {history.get('global_step')} steps trained ({history.get('max_steps')} planned). "
        f"Training stopped because {history.get('stop_reason')}.")
    section.warnings = training_warnings(history)
    return section


def parity_section(parity: dict[str, Any] | None, inputs: Sequence[Any],
                   answers: Mapping[str, Sequence[dict[str, Any]]], agree: Callable[[Any, Any], bool],
                   show: Callable[[dict[str, Any]], str], reference: str = "pytorch") -> Section:
    section = Section("Parity: ONNX variants against PyTorch")
    if not parity:
        section.notes.append("Not exported yet: `bertserve export` measures each ONNX variant against PyTorch.")
        return section
    metric = parity["metric"]
    variants = parity["variants"]
    rows = []
    for name, info in variants.items():
        rows.append([name, round(info["metrics"][metric], 4), info["metric_drop_points"], info["agreement"],
                     float(f"{info.get('max_abs_logit_diff', 0.0):.3g}"), _invariance(info.get("invariance")),
                     "passed" if info["passed"] else "FAILED"])
    section.blocks.append(Table(f"{metric} per variant on {parity['examples']:,} held-out inputs",
                                ["variant", metric, "drop (points)", "agreement with PyTorch", "max |Δ output|",
                                 "alone vs in a batch", "gate"], rows,
                                f"limit: a drop of {parity['max_metric_drop']:g} points"))
    onnx = [v for v in variants if v != reference]
    section.blocks.append(Plot(f"{metric} lost against PyTorch, per variant (points; the gate's limit dashed)", "bar",
                               "", "drop (points)", categories=onnx, levels=[["limit", parity["max_metric_drop"]]],
                               series=[Series("drop", list(range(len(onnx))),
                                              [variants[v]["metric_drop_points"] for v in onnx])]))
    ref = answers.get(reference)
    for name, got in answers.items():
        if name == reference or ref is None:
            continue
        differ = [i for i, (a, b) in enumerate(zip(ref, got, strict=True)) if not agree(a, b)]
        table = Table(f"Where {name} answers differently from PyTorch ({len(differ)} of {len(ref):,})",
                      ["#", "input", "PyTorch", name], [[i, show_input(inputs[i]), show(ref[i]), show(got[i])]
                                                        for i in differ[:MAX_ROWS]],
                      f"first {MAX_ROWS} shown" if len(differ) > MAX_ROWS else "")
        if not differ:
            table.note = "every answer agrees"
        section.blocks.append(table)
    if parity.get("fallback"):
        section.warnings.append(str(parity["fallback"]))
    return section


def _invariance(inv: dict[str, Any] | None) -> str:
    """The batch-invariance check in words: how many answers change when batch-mates do."""
    if not inv:
        return "reference" if inv is None else ""
    words = f"{inv.get('changed', 0)} of {inv.get('inputs', '?')} answers change"
    if "min_cosine" in inv:
        words += f", min cosine {inv['min_cosine']:.6f}"
    elif "max_abs_prob_diff" in inv:
        words += f", max |Δp| {inv['max_abs_prob_diff']:.2g}"
    return words + ("" if inv.get("passed", True) else " (FAILED)")


def latency_section(latency: dict[str, list[list[float]]] | None) -> Section:
    """`latency`: variant -> [[input tokens, ms], ...] (one input at a time)."""
    section = Section("Latency")
    if not latency:
        section.notes.append("Not exported yet: `bertserve export` times each variant.")
        return section
    plot = Plot("Milliseconds per example (one at a time) against its length", "line", "tokens", "ms")
    rows = []
    for name, points in latency.items():
        points = sorted(points)
        plot.series.append(Series(name, [p[0] for p in points], [p[1] for p in points]))
        ms = sorted(p[1] for p in points)
        rows.append([name, len(points), round(ms[len(ms) // 2], 2), round(ms[-1], 2)])
    section.blocks = [plot, Table("Per variant", ["variant", "inputs timed", "median ms", "max ms"], rows)]
    section.notes.append("Measured on the export machine, one example per call (no batching), best of a few runs; "
                         "the service batches concurrent requests, so its throughput is higher.")
    return section


def _base_model(base: str) -> str:
    """A hub id as it is; a local directory by its last two parts (a package's `.../name/model`),
    never the machine's whole path."""
    if not base.startswith(("/", "~", ".")) and "\\" not in base:
        return base
    return "/".join(base.replace("\\", "/").rstrip("/").split("/")[-2:])


def summary_rows(card: Any, name: str, examples_shown: int, examples_total: int) -> list[list[str]]:
    metric = card.primary_metric
    rows = [["model", name], ["task", card.task + (f" ({card.problem_type})" if card.problem_type else "")],
            ["base model", _base_model(str(card.base_model))]]
    if card.labels:
        rows.append(["labels", clip(", ".join(card.labels), 200)])
    if metric in (card.metrics or {}):
        rows.append([f"validation {metric}", f"{card.metrics[metric]:.4f}"])
    for split, info in (card.data or {}).items():
        if isinstance(info, dict) and "rows" in info:
            rows.append([f"{split} rows", f"{info['rows']:,}"])
    variants = getattr(card, "variants", None) or {}
    if len(variants) > 1:
        rows.append(["variants published", f"{card.variant} (the exporting machine's choice), "
                     + ", ".join(v for v in variants if v != card.variant)
                     + "; a service serves the fastest that runs on its hardware"])
    else:
        rows.append(["variant served", card.variant or "not exported (PyTorch)"])
    note = f"{examples_shown:,}" + (f" of {examples_total:,} (sampled)" if examples_total > examples_shown else "")
    rows.append(["examples in this report", note])
    return rows


def build(card: Any, name: str, *, history: dict[str, Any] | None, inputs: Sequence[Any], gold: Sequence[Any],
          answers: Mapping[str, Sequence[dict[str, Any]]], shown: str, latency: dict[str, list[list[float]]] | None = None,
          total_examples: int | None = None) -> Report:
    """The whole report. `answers`: variant -> the task's results for `inputs` (PyTorch's under
    "pytorch"); `shown`: the variant whose answers the quality section describes."""
    from bertserve.registry import get_task

    spec = get_task(card.task)
    quality = Section("Quality on held-out data")
    if spec.report is not None and inputs:
        quality = spec.report(card, inputs, gold, answers[shown])
        quality.title = f"Quality on held-out data ({shown})"
    elif not inputs:
        quality.notes.append("No held-out examples.")
    sections = [training_section(history), quality,
                parity_section(card.parity, inputs, answers, spec.agree, spec.show_answer),
                latency_section(latency)]
    return Report(name=name, task=card.task, summary=summary_rows(card, name, len(gold), total_examples or len(gold)),
                  sections=sections, history=history)
