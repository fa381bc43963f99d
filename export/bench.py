"""`bertserve bench`: model-level speed on real inputs, side by side, in one run.

Paths, all on the same inputs, one after the other:
- `pipeline`: what a user would run instead, a `transformers.pipeline` (PyTorch fp32, batch 32;
  for embeddings, sentence-transformers' `encode`, batch 32);
- `onnx_fp32`, `onnx_int8` (`onnx_int8-vnni` on a VNNI CPU: the int8 build the service serves
  there) and `onnx_fp16` on CUDA: the service's own runtime path (Rust
  tokenizer, length-sorted sub-batches under the token budget, onnxruntime, the task's single
  post-processing), on the variants `bertserve export` builds.

Each path reports sequences/s, its ratio to the pipeline, and the encoder GFLOP/s it achieved
(counted from the model config over the real tokens, not padding) against a matrix product
measured on this machine just before. Speed does not depend on the weights, so without `--model`
the default encoder with an untrained task head is timed.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertserve.artifact import ModelCard, read_card, write_card
from bertserve.data import Columns, load_task_examples
from bertserve.errors import ConfigError
from bertserve.registry import get_task
from bertserve.runtime import MAX_BATCH_TOKENS, Pipeline, providers

log = logging.getLogger(__name__)

BATCH_SIZE = 32
# Where `--data` is looked for when not given: the datasets README of this project describes.
# Each task names its default file under it (TaskSpec.bench_data).
DATA_DIR_ENV = "BERTSERVE_DATA_DIR"

def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or (Path(__file__).resolve().parents[2] / "shared" / "data"))


def bench_inputs(task: str, data: str | None, limit: int | None,
                 columns: Columns | None = None) -> tuple[list[Any], str]:
    """The task's inputs from `data` (read with `columns`), or from its default file
    (TaskSpec.bench_data: SST-2 sentences, CoNLL sentences, SQuAD items, STS-B sentences, STS-B
    sentences as 50 rerank candidates of a query)."""
    spec = get_task(task)
    if data:
        path, columns = data, columns or Columns()
    elif spec.bench_data is None:
        raise ConfigError(f"the {task} task names no default bench data: pass --data")
    else:
        rel, options = spec.bench_data
        path, columns = str(default_data_dir() / rel), Columns(**options)
        if not Path(path).is_file():
            raise ConfigError(f"{path} not found: pass --data, or set {DATA_DIR_ENV} to the folder holding {rel}")
    inputs = spec.inputs_for_bench(load_task_examples(task, path, columns))
    return (inputs[:limit] if limit else inputs), path


def scratch_model(task: str, base: str, out: Path) -> Path:
    """The encoder with an untrained head for `task`, saved as a trained directory would be."""
    from training.common import load_model, load_tokenizer

    spec = get_task(task)
    own = getattr(spec.training_module(), "scratch_model", None)
    if own is not None:  # a task whose untrained model is not an auto-model head (similarity)
        card = own(base, out, spec.max_length)
    else:
        labels = list(spec.scratch_labels)
        kwargs = {"num_labels": len(labels)} if labels else {}
        model = load_model(spec.auto_model, base, **kwargs)
        model.save_pretrained(out, safe_serialization=True)
        load_tokenizer(base).save_pretrained(out)
        card = ModelCard(task=task, labels=labels, max_length=spec.max_length, base_model=base,
                         problem_type=spec.scratch_problem_type)
    card.primary_metric = spec.primary_metric(card)
    write_card(out, card)
    return out


# config.json names of the encoder's sizes: BERT, RoBERTa, ELECTRA and DeBERTa use the first,
# DistilBERT the second (dim, n_layers, hidden_dim)
WIDTH_KEYS = ("hidden_size", "dim", "d_model")
DEPTH_KEYS = ("num_hidden_layers", "n_layers", "num_layers")
FEED_FORWARD_KEYS = ("intermediate_size", "hidden_dim", "ffn_dim", "d_ff")


def _size(config: dict[str, Any], keys: Sequence[str]) -> int | None:
    return next((int(config[k]) for k in keys if isinstance(config.get(k), int)), None)


def encoder_flops(config: dict[str, Any], n_tokens: int) -> float:
    """Multiply-adds x 2 of one encoder pass over n tokens: projections, feed-forward, attention."""
    d, layers = _size(config, WIDTH_KEYS), _size(config, DEPTH_KEYS)
    if d is None or layers is None:
        raise ConfigError(f"config.json ({config.get('model_type', 'unknown model type')}) names its width "
                          f"or depth with none of {WIDTH_KEYS} / {DEPTH_KEYS}: the bench cannot count its FLOPs")
    ff = _size(config, FEED_FORWARD_KEYS) or 4 * d
    per_layer = 2 * n_tokens * (4 * d * d + 2 * d * ff) + 4 * n_tokens * n_tokens * d
    return float(layers * per_layer)


def matmul_ceiling(size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an fp32 matrix product on this machine (best of `repeats`), all cores."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _flops_of(pipeline: Pipeline, inputs: Sequence[Any], config: dict[str, Any]) -> tuple[int, float]:
    """(windows, useful FLOPs) of these inputs as the runtime cuts them."""
    items = [item for group in pipeline.featurize(inputs) for item in group]
    return len(items), sum(encoder_flops(config, item.n_tokens) for item in items)


def baseline(task: str, model_dir: Path, card: ModelCard) -> Callable[[Sequence[Any]], Any] | None:
    """What a user would run instead (the task's `baseline` in its training module: a transformers
    pipeline, PyTorch fp32, batch 32); None for a task that names none."""
    make = getattr(get_task(task).training_module(), "baseline", None)
    return make(model_dir, card, BATCH_SIZE) if make else None


def run_bench(task: str, *, model: str | None = None, data: str | None = None, limit: int | None = None,
              repeats: int = 1, output_dir: str = "reports/bench", columns: Columns | None = None) -> dict[str, Any]:
    get_task(task)  # an unknown task fails here, with the list of known ones
    from bertserve.variants import int8_for, machine_isa
    from export.pipeline import build_variants
    from training.config import default_base_model
    from training.predict import torch_device

    if model and read_card(model).task != task:
        raise ConfigError(f"{model} is a {read_card(model).task} model, not {task}")
    inputs, data_path = bench_inputs(task, data, limit, columns)
    log.info("bench %s: %d inputs from %s", task, len(inputs), data_path)
    with tempfile.TemporaryDirectory(prefix="bertserve-bench-") as tmp:
        work = Path(tmp)
        model_dir = Path(model) if model else scratch_model(task, default_base_model(), work / "model")
        card = read_card(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        gpu = "CUDAExecutionProvider" in providers()
        # one int8 build: the one this CPU serves (8-bit weights need VNNI)
        built = build_variants(model_dir, work / "onnx", get_task(task).optimum_task, gpu,
                               builds=(int8_for(machine_isa()),))
        ceiling = matmul_ceiling()
        log.info("fp32 matrix product on this machine: %.0f GFLOP/s", ceiling)

        runners: dict[str, Callable[[Sequence[Any]], Any]] = {}
        devices: dict[str, str] = {}
        reference = baseline(task, model_dir, card)
        if reference is not None:
            runners["pipeline"], devices["pipeline"] = reference, torch_device()
        pipelines: dict[str, Pipeline] = {}
        for name, path in built["files"].items():
            # int8 is a CPU format: on a GPU machine it is timed on the CPU, fp16 on the GPU
            device = {"fp16": "cuda", "fp32": "auto"}.get(name, "cpu")
            pipelines[name] = Pipeline.from_artifact(path.parent, card, device=device)
            devices[f"onnx_{name}"] = "cuda" if "CUDAExecutionProvider" in pipelines[name].backend.providers[:1] else "cpu"
            runners[f"onnx_{name}"] = lambda xs, p=pipelines[name]: p.predict(
                xs, batch_size=BATCH_SIZE, max_batch_tokens=MAX_BATCH_TOKENS)
        windows, useful = _flops_of(pipelines["fp32"], inputs, config)

        results: dict[str, dict[str, Any]] = {}
        for name, run in runners.items():
            run(inputs[:BATCH_SIZE])  # warm-up: lazy initialisation, allocator, thread pools
            seconds = min(_seconds(lambda run=run: run(inputs)) for _ in range(repeats))
            results[name] = {"device": devices[name], "seconds": round(seconds, 6),
                             "seq_per_s": round(len(inputs) / seconds, 1),
                             "windows_per_s": round(windows / seconds, 1), "gflops": round(useful / seconds / 1e9, 3)}
            log.info("%-10s %8.1f seq/s", name, results[name]["seq_per_s"])
    base_rate = results["pipeline"]["seq_per_s"] if "pipeline" in results else None
    for row in results.values():
        row["speedup_vs_pipeline"] = round(row["seq_per_s"] / base_rate, 2) if base_rate else None
        # the ceiling is the CPU's; a path that ran on the GPU is not judged against it
        row["share_of_matmul_peak"] = round(row["gflops"] / ceiling, 5) if row["device"] == "cpu" else None
    summary = {
        "task": task,
        "data": data_path,
        "inputs": len(inputs),
        "windows": windows,
        "model": str(model) if model else f"{default_base_model()} with an untrained {task} head",
        "batch_size": BATCH_SIZE,
        "useful_gflop": round(useful / 1e9, 1),
        "matmul_gflops": round(ceiling, 1),
        "machine": machine(),
        "paths": results,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    summary["reports"] = write_reports(summary, Path(output_dir))
    return summary


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "providers": providers(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def render_table(summary: dict[str, Any]) -> str:
    lines = [f"bertserve bench: {summary['task']}, {summary['inputs']} inputs ({summary['windows']} windows) "
             f"from {summary['data']}",
             f"machine: {summary['machine']['cpu']}, {summary['machine']['cores']} cores; "
             f"fp32 matrix product on the CPU {summary['matmul_gflops']:.0f} GFLOP/s",
             "",
             "| path | seq/s | x pipeline | GFLOP/s | share of matmul peak | seconds |",
             "|---|--:|--:|--:|--:|--:|"]
    for name, row in summary["paths"].items():
        share = "GPU" if row["share_of_matmul_peak"] is None else f"{100 * row['share_of_matmul_peak']:.0f}%"
        ratio = "-" if row["speedup_vs_pipeline"] is None else f"{row['speedup_vs_pipeline']:.2f}"
        lines.append(f"| {name} ({row['device']}) | {row['seq_per_s']:.1f} | {ratio} "
                     f"| {row['gflops']:.1f} | {share} | {row['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def write_reports(summary: dict[str, Any], directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{summary['task']}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = {"json": str(stem.with_suffix(".json")), "markdown": str(stem.with_suffix(".md"))}
    Path(paths["json"]).write_text(json.dumps(summary, indent=2) + "\n")
    Path(paths["markdown"]).write_text(render_table(summary))
    return paths
