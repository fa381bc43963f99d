"""`bertserve export`: ONNX fp32 -> graph-optimized -> int8 (and fp16 on GPU), parity gate, publish."""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bertserve.artifact import (
    ONNX_FILE,
    REFERENCE_ONNX_FILE,
    TOKENIZER_FILE,
    checksum_files,
    read_card,
    write_card,
)
from bertserve.data import Columns, load_task_examples
from bertserve.errors import ArtifactError, ConfigError, ParityError
from bertserve.quality import assess, gate
from bertserve.registry import get_task
from bertserve.report import REPORT_HTML, REPORT_JSON
from bertserve.runtime import TRUNCATE, LongText, Pipeline, providers
from bertserve.variants import FP16, FP32, INT8, INT8_VNNI, int8_for, machine_isa, why_not_here
from export import invariance
from export import onnx as onnx_steps
from export.parity import REFERENCE, run_parity
from export.report import LATENCY_INPUTS, export_report, measure_latency, write_report
from training.common import VALIDATION_FILE
from training.predict import torch_pipeline

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
# What an export writes into --output: the variants' work directories and the published artifact.
EXPORT_ENTRIES = frozenset({"raw", FP32, INT8, INT8_VNNI, FP16, "artifact"})
# held-out inputs stored in the card: the service times the variants on them at start
SAMPLES = 16


def _parity_examples(task: str, model_dir: Path, data: str | None, columns: Columns | None,
                     n: int) -> tuple[list[dict[str, Any]], int]:
    """The held-out examples the gate runs (a sample of `n` when there are more) and how many there are."""
    if data:
        examples = load_task_examples(task, data, columns or Columns())
    elif (model_dir / VALIDATION_FILE).is_file():
        examples = load_task_examples(task, str(model_dir / VALIDATION_FILE), Columns(file_format="jsonl"))
    else:
        raise ConfigError(f"{model_dir} has no {VALIDATION_FILE}; pass held-out data with --data")
    total = len(examples)
    if total > n:
        examples = random.Random(0).sample(examples, n)
    return examples, total


def check_output(output: Path, source: Path) -> None:
    """`--output` is emptied before the export writes there: refuse any directory whose loss would
    hurt. Allowed: a new directory, an empty one, or an earlier export's (only its own entries)."""
    out, src = output.expanduser().resolve(), source.resolve()
    fix = "choose a new or empty directory for --output, e.g. runs/export"
    protected = {Path.cwd().resolve(): "the current directory", Path.home().resolve(): "your home directory",
                 REPO_ROOT: "the bertserve repository", Path(out.anchor): "the filesystem root"}
    if out in protected:
        raise ConfigError(f"--output {output} is {protected[out]}, which would be deleted: {fix}")
    if out == src or out in src.parents:
        raise ConfigError(f"--output {output} is the model directory or a directory above it, and would be "
                          f"deleted: {fix}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {output} is a file: {fix}")
    if out.is_dir():
        entries = {p.name for p in out.iterdir()}
        if entries and not entries <= EXPORT_ENTRIES:
            others = ", ".join(sorted(entries - EXPORT_ENTRIES)[:3])
            raise ConfigError(f"--output {output} is not empty and is not an earlier bertserve export (it holds "
                              f"{others}); exporting there would delete it: {fix}, or remove it yourself")


def build_variants(model_dir: Path, work: Path, optimum_task: str, gpu: bool,
                   int8: str = "per-token", builds: tuple[str, ...] = (INT8, INT8_VNNI)) -> dict[str, Any]:
    """fp32 (graph-optimized), the int8 `builds` (per-token: 7-bit weights that run exactly
    everywhere, 8-bit ones for VNNI; dynamic: the one for this CPU only), fp16 on a GPU."""
    raw = onnx_steps.export_fp32(model_dir, work / "raw", optimum_task)
    variants = {FP32: onnx_steps.optimize(raw.parent, work / FP32)}
    quantization = {}
    # Dynamic quantization needs shape inference, which the fused (optimized) graph defeats:
    # quantize the plain export; onnxruntime applies its generic fusions when it loads the model.
    for build in builds if int8 == "per-token" else (int8_for(machine_isa()),):
        variants[build], quantization[build] = onnx_steps.quantize(raw.parent, work / build, int8, build)
    if gpu:
        variants[FP16] = onnx_steps.optimize(raw.parent, work / FP16, for_gpu=True)
    for path in variants.values():
        shutil.copy2(model_dir / TOKENIZER_FILE, path.parent / TOKENIZER_FILE)
    return {"files": variants, "quantization": quantization}


def int8_builds(variant: str, reference: bool, gpu: bool) -> tuple[tuple[str, ...], dict[str, str]]:
    """The int8 builds to make, and those left out with why. One store entry holds every build this
    machine computes exactly (the gate must run a variant as it will be served: 8-bit weights on a
    CPU without VNNI saturate, so int8-vnni is built and gated on VNNI or arm64 machines only); a
    named variant or --no-reference: the one build asked for, or this CPU's."""
    if variant in (INT8, INT8_VNNI):
        if not runs_here(variant, gpu):
            raise ConfigError(f"--variant {variant}: this CPU ({machine_isa()}) cannot compute it exactly, so the "
                              "parity gate could not check it as it will be served; export on a VNNI machine")
        return (variant,), {}
    if variant != "auto" or not reference:
        return (int8_for(machine_isa()),), {}
    not_built = {name: f"not built: this CPU ({machine_isa()}) cannot compute it exactly, so the gate could not "
                 "check it as served; export on a VNNI machine to publish it"
                 for name in (INT8, INT8_VNNI) if not runs_here(name, gpu)}
    return tuple(n for n in (INT8, INT8_VNNI) if n not in not_built), not_built


def runs_here(name: str, gpu: bool) -> bool:
    """Whether this machine computes variant `name` exactly (the 8-bit int8 build needs VNNI)."""
    return why_not_here(name, {"device": "cuda" if name == FP16 else "cpu"}, machine_isa(), gpu) is None


def choose(report: dict[str, Any], requested: str, gpu: bool) -> str:
    """The export machine's own choice (`model.onnx`; what `bertserve evaluate` on the artifact runs):
    fp16 on a GPU, else the int8 build for this CPU, else fp32; `requested` pins one."""
    variants = report["variants"]
    if requested != "auto":
        if requested not in variants:
            raise ConfigError(f"variant {requested} was not built here (fp16 needs a GPU and onnxruntime-gpu)")
        if not variants[requested]["passed"]:
            raise ParityError(f"refusing to publish {requested}: {_why(report, requested)}; "
                              "publish another variant or raise the limit knowingly")
        return requested
    int8 = int8_for(machine_isa())
    for name in ([FP16] if gpu else []) + [int8, INT8, FP32]:
        if name in variants and variants[name]["passed"] and runs_here(name, gpu):
            failed = next((n for n in (int8, INT8) if n in variants), None)
            if name == FP32 and failed:
                log.warning("%s failed the parity gate (%s): publishing fp32", failed, _why(report, failed))
                report["fallback"] = f"{failed} failed the parity gate: {_why(report, failed)}"
            return name
    raise ParityError(f"no variant passed the parity gate ({report['metric']} drop limit "
                      f"{report['max_metric_drop']:g} points); see the parity report above")


def stored_variants(report: dict[str, Any], chosen: str, requested: str, reference: bool) -> dict[str, str]:
    """The variants one store entry holds, by file: the chosen one as `model.onnx`; with
    `reference`, fp32 as `reference.onnx` (shadow parity's reference); and with neither a pinned
    variant nor --no-reference, every other variant that passed the gate."""
    files = {chosen: ONNX_FILE}
    if reference and chosen != FP32 and FP32 in report["variants"]:
        files[FP32] = REFERENCE_ONNX_FILE
    if requested == "auto" and reference:
        for name, info in report["variants"].items():
            if name not in files and name != REFERENCE and info["passed"]:
                files[name] = f"{name}.onnx"
    return files


def _why(report: dict[str, Any], name: str) -> str:
    info = report["variants"][name]
    reasons = []
    if info["metric_drop_points"] > report["max_metric_drop"]:
        reasons.append(f"{report['metric']} drops by {info['metric_drop_points']:.2f} points, more than "
                       f"--max-metric-drop {report['max_metric_drop']:g}")
    if invariance.failure(info):
        reasons.append(str(invariance.failure(info)))
    return "; ".join(reasons) or "failed"


def export_model(model_dir: str, *, name: str | None = None, output: str | None = None, data: str | None = None,
                 columns: Columns | None = None, variant: str = "auto", max_metric_drop: float = 1.0,
                 parity_samples: int = 2000, publish: bool = True, int8: str = "per-token",
                 batch_gate: invariance.InvarianceGate | None = None, reference: bool = True,
                 long_text: LongText | None = None, allow_weak: bool = False,
                 on_step: Callable[[str], None] | None = None, latency_inputs: int = LATENCY_INPUTS) -> dict[str, Any]:
    """Export, gate and (with `publish`) publish a training output. `allow_weak` publishes a model
    the quality gate finds weak (with a warning); `on_step(what)` is told as each step begins (the
    progress display of `bertserve fit`); `latency_inputs`: held-out inputs the report times."""
    step = on_step or (lambda what: None)
    source = Path(model_dir)
    card = read_card(source)
    if card.variant is not None or (source / ONNX_FILE).exists():
        raise ArtifactError(f"{source} is already an exported artifact; export the training output directory")
    if not publish and not output:
        raise ConfigError("--no-publish keeps nothing unless --output is given")
    spec = get_task(card.task)
    if long_text is not None and long_text.policy != TRUNCATE:
        if spec.featurize is not None:
            raise ConfigError(f"--long-text applies to tasks that cut long texts; {card.task} models read every "
                              "text whole in windows already")
        card.long_text = long_text.record()  # the gate below runs with it: it checks what is served
    gpu = "CUDAExecutionProvider" in providers()
    name = name or source.resolve().name
    with tempfile.TemporaryDirectory(prefix="bertserve-export-") as tmp:
        work = Path(output) if output else Path(tmp)
        if output:
            check_output(work, source)
            if work.exists():
                shutil.rmtree(work)  # an earlier export's directory (check_output says so)
        work.mkdir(parents=True, exist_ok=True)
        log.info("exporting %s (%s) to ONNX", source, card.task)
        step("ONNX export, optimization and quantization")
        builds, not_built = int8_builds(variant, reference, gpu)
        built = build_variants(source, work, spec.optimum_task, gpu, int8, builds)
        examples, total = _parity_examples(card.task, source, data, columns, parity_samples)
        step(f"parity gate: {len(examples)} held-out examples through pytorch and {', '.join(built['files'])}")
        log.info("parity gate: %d held-out examples through pytorch and %s", len(examples), ", ".join(built["files"]))
        pipelines = {REFERENCE: torch_pipeline(source, card)}
        for vname, path in built["files"].items():
            pipelines[vname] = Pipeline.from_artifact(path.parent, card, device="cuda" if vname == "fp16" else "auto")
        answers: dict[str, list[dict[str, Any]]] = {}
        report = run_parity(pipelines, examples, max_metric_drop, answers=answers)
        if not_built:
            report["not_built"] = not_built
        inputs, gold = spec.split_examples(examples)
        # the quality gate on what the parity gate ran: the PyTorch model against a constant answer
        report["quality"] = assess(card, answers[REFERENCE], gold)
        gate(report["quality"], allow_weak, where=str(source))
        if report["quality"] is not None and report["quality"]["weak"]:
            report["quality"]["published_anyway"] = True  # --allow-weak
        step("batch invariance")
        invariance.check(report, pipelines, inputs, batch_gate or invariance.InvarianceGate())
        chosen = choose(report, variant, gpu)
        step("latency and the model report")
        log.info("timing each variant on %d held-out inputs, one at a time, for the model report", latency_inputs)
        latency = measure_latency(pipelines, inputs, n=latency_inputs)

        artifact = work / "artifact"
        artifact.mkdir()
        files = stored_variants(report, chosen, variant, reference)
        for vname, file in files.items():
            shutil.copy2(built["files"][vname], artifact / file)
        stored = [*files.values(), TOKENIZER_FILE, REPORT_JSON, REPORT_HTML]
        shutil.copy2(source / TOKENIZER_FILE, artifact / TOKENIZER_FILE)
        card.variant = chosen
        card.variants = {vname: {"file": file, "device": "cuda" if vname == FP16 else "cpu",
                                 "passed": report["variants"][vname]["passed"],
                                 "quantization": built["quantization"].get(vname)}
                         for vname, file in files.items()}
        card.samples = list(inputs[:SAMPLES])
        card.parity = report
        card.training["export"] = {"quantization": built["quantization"], "source": str(source.resolve())}
        write_report(artifact, export_report(card, name, source, inputs, gold, answers, latency, total))
        card.files = checksum_files(artifact, stored)
        write_card(artifact, card)
        result: dict[str, Any] = {"variant": chosen, "variants": list(files), "metric": report["metric"],
                                  "parity": {k: {m: v[m] for m in ("metric_drop_points", "agreement", "passed",
                                                                   "invariance") if m in v}
                                             for k, v in report["variants"].items()}}
        if "fallback" in report:
            result["fallback"] = report["fallback"]
        if not_built:
            result["not_built"] = not_built
        if report["quality"] is not None:
            result["quality"] = {k: report["quality"][k] for k in ("metric", "value", "baseline", "required", "weak")}
        if output:
            result["artifact"] = str(artifact)
        if publish:
            from bertserve.store import publish as publish_to_store

            step("publish")
            result["tag"] = publish_to_store(artifact, name, card)
            log.info("published %s (%s) to the BentoML store", result["tag"], chosen)
    return result
