"""`bertserve` command line: train, export, fit, evaluate, report, quickstart, models, reload, bench, data.

The dispatch sits above the layers it calls (training/, export/, the torch-free core bertserve/),
so that no layer imports upwards. Heavy imports (torch, transformers, optimum) happen inside the
commands that need them, so `bertserve --help` is instant and the serving image never loads them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertserve.errors import BertserveError, ConfigError
from bertserve.variants import FP16, FP32, INT8, INT8_VNNI

if TYPE_CHECKING:
    from bertserve.data import Columns

log = logging.getLogger("bertserve")
OUR_LOGGERS = ("bertserve", "training", "export")
VARIANT_CHOICES = ["auto", FP32, INT8, INT8_VNNI, FP16]


class _OurRecords(logging.Filter):
    """Passes our own loggers' records (keep=True) or everyone else's (keep=False)."""

    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.name.split(".", 1)[0] in OUR_LOGGERS) == self.keep


@contextlib.contextmanager
def library_output_to(stream: Any) -> Iterator[None]:
    """Our progress stays on the terminal; everything the libraries print or log goes to `stream`.

    Printing is caught by redirecting stdout/stderr. Logging is not: a handler holds the stream it was
    made with. Library records that propagate reach the root handler, which holds the terminal, so
    the root handlers pass only our records and a handler on `stream` takes the rest; a library's
    own handler on the terminal (transformers makes one at import) writes to `stream` meanwhile.
    Afterwards every handler is back on the terminal, those made meanwhile on `stream` included.
    """
    root = logging.getLogger()
    terminal = {id(s) for s in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)}
    ours, theirs = _OurRecords(keep=True), logging.StreamHandler(stream)
    theirs.addFilter(_OurRecords(keep=False))
    theirs.setFormatter(root.handlers[0].formatter if root.handlers else None)
    for handler in root.handlers:
        handler.addFilter(ours)
    moved: list[tuple[logging.StreamHandler[Any], Any]] = []
    for logger in _library_loggers():
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and id(handler.stream) in terminal:
                moved.append((handler, handler.stream))
                handler.setStream(stream)
    root.addHandler(theirs)
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield
    finally:
        root.removeHandler(theirs)
        for handler in root.handlers:
            handler.removeFilter(ours)
        for handler, old in moved:
            handler.setStream(old)
        for logger in _library_loggers():
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                    handler.setStream(sys.stderr)


def _library_loggers() -> list[logging.Logger]:
    return [lg for name, lg in logging.Logger.manager.loggerDict.items()
            if isinstance(lg, logging.Logger) and name.split(".", 1)[0] not in OUR_LOGGERS]


def _columns(args: argparse.Namespace) -> Columns:
    from bertserve.data import Columns

    names = None
    if args.label_names:
        if os.path.isfile(args.label_names):
            with open(args.label_names, encoding="utf-8") as fh:
                names = tuple(line.strip() for line in fh if line.strip())
        else:
            names = tuple(n.strip() for n in args.label_names.split(","))
    return Columns(
        text=args.text_column,
        label=args.label_column,
        header=args.header,
        text_pair=args.text_pair_column,
        label_separator=args.label_separator,
        label_names=names,
        file_format=args.format,
        documents=args.documents,
    )


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data columns (CSV, TSV, JSONL)")
    g.add_argument("--text-column", default="text", help="field or 0-based column number holding the text")
    g.add_argument("--label-column", default="label",
                   help="field or 0-based column number holding the label (similarity: the score)")
    g.add_argument("--text-pair-column",
                   help="the second text of a pair. classification/rerank: each row is read as one pair input "
                   "([CLS] text [SEP] pair [SEP]); a pair longer than --max-length is cut longest side first "
                   "(longest_first: the shorter text, e.g. a query, keeps its tokens while the other is longer). "
                   "JSONL rows with a `text_pair` field are pairs without it (rerank: `query`/`passage`). "
                   "similarity: the second sentence (default: text_a/text_b, sentence1/sentence2 or "
                   "anchor/positive fields are found by name)")
    g.add_argument("--format", choices=["csv", "tsv", "jsonl"], help="file format (default: from the extension)")
    g.add_argument("--header", dest="header", action="store_true", default=None,
                   help="the first row is a header (default when columns are named)")
    g.add_argument("--no-header", dest="header", action="store_false",
                   help="the file has no header row (name columns by number)")
    g.add_argument("--label-separator", help="split a label cell into several labels (multi-label), e.g. ','")
    g.add_argument("--label-names", help="names for integer label ids: a comma list or a file with one per line")
    g.add_argument("--documents", action="store_true",
                   help="ner, CoNLL files: one text per document (between -DOCSTART- lines) instead of one per "
                   "sentence, so each sentence is read with its neighbours. Measured on CoNLL-2003 it trained a "
                   "worse model than sentences (test F1 0.845 read by documents, 0.824 by sentences, against "
                   "0.860): sentences stay the default")


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig's options from `train`'s flags (`fit` takes them all too)."""
    return dict(
        task=args.task,
        train=args.train,
        validation=args.validation,
        output=args.output,
        base_model=args.base_model,
        columns=_columns(args),
        problem_type=args.problem_type,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        class_weights=args.class_weights,
        early_stopping_patience=args.patience,
        max_minutes=args.max_minutes,
        checkpoint_steps=args.checkpoint_steps,
        resume=args.resume,
        overwrite=args.overwrite,
        skip_bad_rows=args.skip_bad_rows,
        demo=args.demo,
    )


def _train(args: argparse.Namespace) -> tuple[Any, int]:
    from training import run_training
    from training.config import TrainConfig

    cfg = TrainConfig(**_train_options(args))
    card = run_training(cfg)
    summary = ("duration_s", "epochs_completed", "best_step", "stopped_early", "resumed_from_step", "processes",
               "schedule", "quality")
    return {"output": cfg.output, "metrics": card.metrics, "training": {k: card.training.get(k) for k in summary},
            "skipped_rows": {name: info.get("skipped_rows", 0) for name, info in card.data.items()}}, 0


def _fit(args: argparse.Namespace) -> tuple[Any, int]:
    from export.fit import STAGES, default_output, render, run_fit
    from export.progress import Progress

    terminal = sys.stderr  # main() sends stdout here while a command runs; the libraries' output goes to a log
    progress = Progress(terminal, STAGES if args.serve else STAGES[:-1])
    export_options = dict(variant=args.variant, max_metric_drop=args.max_metric_drop, int8=args.int8)

    def fit() -> dict[str, Any]:
        return run_fit(_train_options(args), name=args.name, progress=progress, export_options=export_options,
                       allow_weak=args.allow_weak, serve=args.serve, port=args.port)

    if args.verbose:
        summary = fit()
    else:
        path = Path(args.output or default_output(args.name)).parent / f"{args.name}.fit.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        terminal.write(f"bertserve fit: the libraries' output and the detailed log go to {path} (-v shows them)\n")
        with path.open("a", encoding="utf-8") as library_log, library_output_to(library_log), \
                our_details_to(library_log):
            summary = fit()
    if args.json:
        return summary, 0
    return render(summary), int(summary.get("serve_exit_code", 0))


@contextlib.contextmanager
def our_details_to(stream: Any) -> Iterator[None]:
    """While `fit` draws its progress display, our own INFO records go to `stream` (the log file);
    the terminal keeps warnings and errors."""
    root = logging.getLogger()
    levels = [(h, h.level) for h in root.handlers]
    details = logging.StreamHandler(stream)
    details.addFilter(_OurRecords(keep=True))
    details.setFormatter(root.handlers[0].formatter if root.handlers else None)
    for handler, _ in levels:
        handler.setLevel(logging.WARNING)
    root.addHandler(details)
    try:
        yield
    finally:
        root.removeHandler(details)
        for handler, level in levels:
            handler.setLevel(level)


def _export(args: argparse.Namespace) -> tuple[Any, int]:
    from export.invariance import InvarianceGate
    from export.pipeline import export_model

    result = export_model(
        args.model_dir,
        name=args.name,
        output=args.output,
        data=args.data,
        columns=_columns(args) if args.data else None,
        variant=args.variant,
        max_metric_drop=args.max_metric_drop,
        parity_samples=args.parity_samples,
        publish=not args.no_publish,
        int8=args.int8,
        batch_gate=InvarianceGate(min_cosine=args.min_batch_cosine, max_extra_changes=args.max_batch_changes),
        reference=not args.no_reference,
        long_text=_long_text(args),
        allow_weak=args.allow_weak,
    )
    return result, 0


def _long_text(args: argparse.Namespace) -> Any:
    """--long-text / --aggregate as a runtime.LongText (None: the model's own policy)."""
    from bertserve.runtime import CHUNK, LongText

    if args.long_text is None:
        if args.aggregate is not None:
            raise ConfigError("--aggregate applies only with --long-text chunk")
        return None
    if args.aggregate is not None and args.long_text != CHUNK:
        raise ConfigError(f"--aggregate applies only with --long-text chunk, not {args.long_text}")
    return LongText(args.long_text, args.aggregate or "mean")


def _add_long_text_options(p: argparse.ArgumentParser, policies: list[str], what: str) -> None:
    p.add_argument("--long-text", choices=policies, help=f"texts longer than the model's window: {what}")
    p.add_argument("--aggregate", choices=["mean", "max"],
                   help="with --long-text chunk: the token-weighted mean of the windows (default), or the window "
                   "the model is surest of")


def _add_allow_weak(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-weak", action="store_true",
                   help="publish a model the quality gate refuses: one whose validation metric is not clearly "
                   "above a constant answer's (the majority class, a guess by class frequencies, the mean), "
                   "or that never predicts a class the validation data holds")


def _evaluate(args: argparse.Namespace) -> tuple[Any, int]:
    from bertserve.evaluate import evaluate, model_path

    options = dict(batch_size=args.batch_size, threshold=args.threshold, limit=args.limit, task=args.task,
                   model=args.served_model, long_text=_long_text(args))
    if not args.model.startswith(("http://", "https://")) and not (model_path(args.model) / "model.onnx").is_file():
        from training.predict import (
            evaluate as evaluate_trained,  # a PyTorch directory: needs torch
        )

        return evaluate_trained(args.model, args.data, _columns(args), **options), 0
    return evaluate(args.model, args.data, _columns(args), **options), 0


def _quickstart(args: argparse.Namespace) -> tuple[Any, int]:
    from export.quickstart import ensure_demo_models, log_path

    # Our progress lines stay on the terminal (logging's handler holds the terminal's stream); what
    # the libraries print while training and exporting (progress bars, loss dicts, notices about new
    # head weights, deprecation and tracer warnings) goes to a log file instead, unless --verbose.
    if args.verbose:
        published = ensure_demo_models(force=args.force)
    else:
        path = log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("library output goes to %s", path)
        with path.open("a", encoding="utf-8") as library_log, library_output_to(library_log):
            published = ensure_demo_models(force=args.force, log_file=str(path))
    if args.json:
        return {"published": published}, 0
    if not published:
        return "every task has a published model; nothing to train (`bertserve models` lists them)", 0
    return "published demo models: " + ", ".join(f"{task} {tag}" for task, tag in published.items()), 0


def _bench(args: argparse.Namespace) -> tuple[Any, int]:
    from export.bench import render_table, run_bench

    summary = run_bench(args.task, model=args.model, data=args.data, limit=args.limit, repeats=args.repeats,
                        output_dir=args.output_dir, columns=_columns(args) if args.data else None)
    if args.json:
        return summary, 0
    return render_table(summary) + f"\nreports: {summary['reports']['json']}, {summary['reports']['markdown']}", 0


def _report(args: argparse.Namespace) -> tuple[Any, int]:
    from export.report import report_command

    return report_command(args.model, args.output, limit=args.limit), 0


def _data_qnli(args: argparse.Namespace) -> tuple[Any, int]:
    from bertserve.data_qnli import write_qnli

    return write_qnli(args.squad, args.output, max_negatives=args.max_negatives, seed=args.seed), 0


def _data_squad2(args: argparse.Namespace) -> tuple[Any, int]:
    from bertserve.data_squad2 import write_squad2

    return write_squad2(args.squad, args.output, impossible_fraction=args.impossible_fraction, seed=args.seed), 0


def _models(args: argparse.Namespace) -> tuple[Any, int]:
    from bertserve.registry import get_task
    from bertserve.store import list_published

    if args.task:
        get_task(args.task)  # a misspelt task is refused with the list of known ones, not answered []
    published = list_published(task=args.task)
    if args.url:  # mark what that service serves, and under which names
        from bertserve.client import ServiceClient

        served = ServiceClient(args.url).served()["models"]
        for entry in published:
            entry["served_as"] = sorted(n for n, m in served.items() if m["tag"] == entry["tag"])
    return published, 0


def _reload(args: argparse.Namespace) -> tuple[Any, int]:
    from bertserve.client import ServiceClient

    client = ServiceClient(args.url, api_key=args.api_key or os.environ.get("BERTSERVE_API_KEY"))
    answer = client.reload(args.model or None)
    if args.json:
        return answer, 0
    lines = [f"{name}: {swap['before']} -> {swap['after']}" if name in answer["changed"] else
             f"{name}: {swap['after']} (unchanged)" for name, swap in answer["models"].items()]
    return "\n".join([f"reload {answer['generation']}, {answer['workers']} worker(s):", *lines]), 0


def _add_train_options(t: argparse.ArgumentParser, output_required: bool, output_help: str) -> None:
    from bertserve.registry import tasks

    t.add_argument("task", choices=sorted(tasks()), help="the task to train")
    t.add_argument("--train", required=True, help="training data: CSV/TSV/JSONL file, or a Hugging Face dataset: "
                   "hf:NAME[:CONFIG]:SPLIT from the hub, hf:DIRECTORY[:SPLIT] from a local one; "
                   "ner: a CoNLL file (tag in the last column) or JSONL with tokens/tags or text/entities; "
                   "qa: SQuAD v1.1/v2.0 JSON or JSONL with question/context/answers")
    t.add_argument("--validation", help="validation data (default: a stratified split of --train)")
    t.add_argument("--output", required=output_required, help=output_help)
    t.add_argument("--base-model", help="HF id, local directory or earlier bertserve model (default: all-MiniLM-L6-v2)")
    t.add_argument("--problem-type", default="auto",
                   choices=["auto", "single_label", "multi_label", "regression"])
    t.add_argument("--learning-rate", type=float,
                   help="default: chosen from the data: 5e-5; classification on up to 2,000 examples with a "
                   "small encoder (hidden size <= 512, as the default MiniLM) 1.5e-4")
    t.add_argument("--epochs", type=float,
                   help="default: chosen from the data: 3 up to 20k examples, 2 up to 80k, 1 beyond; "
                   "classification on up to 2,000 examples about 150 optimizer steps (3-15 epochs). Early "
                   "stopping may end sooner. similarity: 0 packages the base encoder without fine-tuning")
    t.add_argument("--batch-size", type=int, default=32,
                   help="examples per step and process (under torchrun with N processes a step takes N times as many)")
    t.add_argument("--max-length", type=int,
                   help="tokens per window (default 128; qa 384). NER and QA read longer inputs in overlapping windows")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--class-weights", default="auto", choices=["auto", "balanced", "none"],
                   help="auto: balanced weights when the largest class is 3x the smallest or more; "
                   "multi-label: positive weights per label")
    t.add_argument("--patience", type=int, default=3, help="evaluations without improvement before stopping")
    t.add_argument("--max-minutes", type=float, help="time budget; the best checkpoint so far is kept")
    t.add_argument("--checkpoint-steps", type=int,
                   help="evaluate and checkpoint every N optimizer steps (default: 4 times per epoch, at most once "
                   "per epoch and every 20 steps on small sets); a killed run loses at most N steps")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --output from its last complete checkpoint "
                   "(the same options and data are required)")
    t.add_argument("--overwrite", action="store_true", help="replace what is in --output")
    t.add_argument("--skip-bad-rows", action="store_true",
                   help="leave malformed data rows out (counted, logged with the first one's file and line, and "
                   "recorded in the card) instead of stopping at the first")
    t.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    _add_data_options(t)


def build_parser() -> argparse.ArgumentParser:
    from bertserve.registry import tasks

    parser = argparse.ArgumentParser(prog="bertserve", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune an encoder plus a task head")
    _add_train_options(t, True, "directory for the trained model")
    t.set_defaults(func=_train)

    f = sub.add_parser("fit", help="train, gate, export and publish in one command (and serve, with --serve); "
                       "every train option applies")
    _add_train_options(f, False, "directory for the trained model (default: runs/fit/NAME); running the same "
                       "command again reuses a finished training there, or resumes an interrupted one")
    f.add_argument("--name", required=True, help="the model's name in the BentoML store (each fit publishes a new "
                   "version of it)")
    f.add_argument("--serve", action="store_true",
                   help="then start `bentoml serve` with the new version as the task's default model (a new "
                   "service: one already running keeps what it loaded until restarted)")
    f.add_argument("--port", type=int, default=3000, help="with --serve: the port to serve on")
    _add_allow_weak(f)
    f.add_argument("--variant", default="auto", choices=VARIANT_CHOICES,
                   help="as `export --variant`")
    f.add_argument("--max-metric-drop", type=float, default=1.0, help="as `export --max-metric-drop`")
    f.add_argument("--int8", default="per-token", choices=["per-token", "dynamic"], help="as `export --int8`")
    f.add_argument("--json", action="store_true", help="print the summary as JSON")
    f.set_defaults(func=_fit)

    e = sub.add_parser("export", help="ONNX export, optimization, quantization, parity gate, publish")
    e.add_argument("model_dir", help="a directory written by `bertserve train`")
    e.add_argument("--name", help="model name in the BentoML store (default: the directory name)")
    e.add_argument("--output", help="also keep the exported artifact here (default: a temporary directory)")
    e.add_argument("--data", help="held-out data for the parity gate (default: the model's validation split)")
    e.add_argument("--variant", default="auto", choices=VARIANT_CHOICES,
                   help="auto: publish every variant that passes the gate (fp32, int8 with 7-bit weights that "
                   "runs exactly everywhere, int8-vnni with 8-bit weights for VNNI CPUs, fp16 on a GPU); the "
                   "service serves the fastest that runs where it runs. A variant named: publish that one only "
                   "(and the fp32 reference)")
    e.add_argument("--max-metric-drop", type=float, default=1.0,
                   help="largest allowed drop of the model's metric, in points (0-100 scale)")
    e.add_argument("--parity-samples", type=int, default=2000, help="held-out examples the gate runs")
    e.add_argument("--no-publish", action="store_true", help="export and check only")
    e.add_argument("--int8", default="per-token", choices=["per-token", "dynamic"],
                   help="int8 activation scales: per token (batch-invariant, default) or onnxruntime's dynamic "
                   "quantization (one scale per batch: answers move with batch-mates, so it fails the gate)")
    e.add_argument("--min-batch-cosine", type=float, default=0.999,
                   help="embeddings: worst allowed cosine between a text's vector alone and inside a full batch")
    e.add_argument("--max-batch-changes", type=int, default=0,
                   help="label flips / changed spans between alone and batched allowed beyond fp32's")
    e.add_argument("--no-reference", action="store_true",
                   help="publish the one variant this machine chooses, without the fp32 reference beside a "
                   "quantized model (shadow parity, BERTSERVE_SHADOW_RATE, needs it) or the other variants: the "
                   "smallest store entry")
    _add_allow_weak(e)
    _add_long_text_options(e, ["truncate", "chunk"], "the model's own policy, which the parity gate runs with "
                           "and the service uses unless a request or BERTSERVE_LONG_TEXT says otherwise "
                           "(default: truncate)")
    _add_data_options(e)
    e.set_defaults(func=_export)

    v = sub.add_parser("evaluate", help="score a trained directory or a published model on labeled data")
    v.add_argument("model", help="a trained model directory, an exported artifact, a BentoML store tag, "
                   "or the URL of a running service (scored through its HTTP endpoint)")
    v.add_argument("--data", required=True, help="labeled CSV/TSV/JSONL file")
    v.add_argument("--batch-size", type=int, default=64)
    v.add_argument("--threshold", type=float, help="multi-label: one flat threshold instead of the tuned ones")
    v.add_argument("--limit", type=int, help="score only the first N examples")
    v.add_argument("--task", choices=sorted(tasks()),
                   help="with a service URL: score the default model of this task")
    v.add_argument("--served-model", help="with a service URL: the served model to score, by its name in /info "
                   "(default: the only one served, or --task's default)")
    _add_long_text_options(v, ["truncate", "error", "chunk"], "as a request's long_text (default: the model's "
                           "own policy)")
    _add_data_options(v)
    v.set_defaults(func=_evaluate)

    q = sub.add_parser("quickstart", help="train and publish small demo models where none is published")
    q.add_argument("--force", action="store_true", help="publish new demo models even if models exist")
    q.add_argument("--json", action="store_true", help='print {"published": {task: tag}} instead of a sentence')
    q.set_defaults(func=_quickstart)

    m = sub.add_parser("models", help="list published bertserve models in the BentoML store")
    m.add_argument("--task", choices=sorted(tasks()), help="only this task")
    m.add_argument("--url", help="a running service: mark the published models it serves (and their names)")
    m.set_defaults(func=_models)

    r = sub.add_parser("reload", help="make a running service serve the newest published versions (POST "
                       "/admin/reload; the service needs BERTSERVE_ADMIN_RELOAD=true)")
    r.add_argument("--url", default="http://localhost:3000", help="the service (default: %(default)s)")
    r.add_argument("--model", action="append", help="a served name to reload (repeat for more; default: all)")
    r.add_argument("--api-key", help="the service's BERTSERVE_API_KEY (default: that variable here)")
    r.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    r.set_defaults(func=_reload)

    b = sub.add_parser("bench", help="sequences/s of the transformers pipeline vs the ONNX runtime path, same inputs")
    b.add_argument("--task", required=True, choices=sorted(tasks()))
    b.add_argument("--model", help="a trained directory (default: the default encoder with an untrained head; "
                   "speed does not depend on the weights)")
    b.add_argument("--data", help="inputs (default: SST-2 dev, CoNLL test, SQuAD dev or STS-B dev under "
                   "$BERTSERVE_DATA_DIR, else ../shared/data)")
    b.add_argument("--limit", type=int, help="only the first N inputs")
    b.add_argument("--repeats", type=int, default=3, help="timed passes per path; the fastest counts")
    b.add_argument("--output-dir", default="reports/bench", help="where the JSON and markdown reports go")
    b.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
    _add_data_options(b)
    b.set_defaults(func=_bench)

    r = sub.add_parser("report", help="a model's report as one HTML page: training curves, quality, parity, latency")
    r.add_argument("model", help="a training directory, an exported artifact directory or a published tag (name:version)")
    r.add_argument("--output", help="the directory to write report.html (and report.json) to (default: reports/<name>)")
    r.add_argument("--limit", type=int, default=2000,
                   help="a training directory: at most N validation examples, sampled (exports keep the gate's sample)")
    r.set_defaults(func=_report)

    d = sub.add_parser("data", help="convert public data sets into training files")
    dsub = d.add_subparsers(dest="data_command", required=True)
    qn = dsub.add_parser("qnli", help="QNLI-style reranking rows (query, passage, label) from SQuAD v1.1 JSON: "
                         "each context split into sentences, the one holding the answer start labeled 1")
    qn.add_argument("--squad", required=True, help="a SQuAD v1.1 JSON file (a train slice to train on, dev to evaluate)")
    qn.add_argument("--output", required=True, help="the JSONL file to write")
    qn.add_argument("--max-negatives", type=int, help="keep at most N other sentences per question (drawn with "
                    "--seed): smaller training sets; default all (evaluate on all)")
    qn.add_argument("--seed", type=int, default=0)
    qn.set_defaults(func=_data_qnli)
    s2 = dsub.add_parser("squad2", help="SQuAD v2.0 JSON with unanswerable questions from SQuAD v1.1: a share of "
                         "the questions moved to a paragraph of another article, marked is_impossible")
    s2.add_argument("--squad", required=True, help="a SQuAD v1.1 JSON file (two articles or more)")
    s2.add_argument("--output", required=True, help="the SQuAD v2.0 JSON file to write (.json)")
    s2.add_argument("--impossible-fraction", type=float, default=0.33,
                    help="share of all the questions made unanswerable (questions already unanswerable count)")
    s2.add_argument("--seed", type=int, default=0, help="draws the questions moved and their paragraphs")
    s2.set_defaults(func=_data_squad2)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun / accelerate launch every process runs this; the first one reports.
    rank, processes = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    # Our own progress at INFO; libraries (onnxruntime's quantizer logs every tensor) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for ours in OUR_LOGGERS:
        level = logging.DEBUG if args.verbose else logging.INFO
        logging.getLogger(ours).setLevel(level if rank == 0 else logging.ERROR)
    try:
        # Libraries print progress and log dicts to stdout (the Trainer's, via tqdm.write); stdout
        # is kept for the command's JSON result, so everything else goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            result, code = args.func(args)
        code = int(code)
        if rank != 0:
            return code
        if isinstance(result, str):  # a command's human-readable report
            print(result)
        elif result is not None:
            print(json.dumps(result, indent=2))
        return code
    except BertserveError as exc:
        where = f" (process {rank} of {processes})" if processes > 1 else ""
        print(f"bertserve: error{where}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bertserve: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
