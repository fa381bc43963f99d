"""`bertserve fit`: from a labeled file to a published (and, with `serve`, served) model in one
command: train with the defaults chosen from the data, check the model against a constant answer
(the quality gate), export through the parity gate, publish, and say how to call it.

Each stage reuses the command it stands for (`training.run_training`, `export.pipeline.export_model`)
and a stage that fails names itself and keeps what the stages before it made. The training output
stays in its directory: running the same command again picks up a finished training with the same
settings and data (and an interrupted one from its last checkpoint) instead of training again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bertserve.artifact import read_card
from bertserve.client import ServiceClient
from bertserve.data import Columns, load_task_examples
from bertserve.errors import BertserveError, ConfigError, FitError
from bertserve.quality import gate
from bertserve.registry import get_task
from export.progress import Progress, duration
from training.common import VALIDATION_FILE
from training.config import RESUMABLE_CHANGES, TrainConfig

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "quality gate", "export", "serve")
WEIGHTS_FILE = "model.safetensors"


def default_output(name: str) -> Path:
    """Where fit keeps the training output of model `name` (`--output` chooses another place)."""
    return Path("runs") / "fit" / name


def _settings_of(card: Any) -> dict[str, Any]:
    """What a finished training was made from, in the form of TrainConfig.run_settings()."""
    config = dict((card.training or {}).get("config") or {})
    settings = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    settings["train_sha256"] = (card.data.get("train") or {}).get("sha256")
    held_out = not config.get("validation")  # a split of --train: no file of its own
    settings["validation_sha256"] = None if held_out else (card.data.get("validation") or {}).get("sha256")
    same_form: dict[str, Any] = json.loads(json.dumps(settings))
    return same_form


def finished_training(cfg: TrainConfig) -> tuple[bool, list[str]]:
    """Whether cfg.output holds a complete training output, and how its settings and data differ
    from cfg's (none: it is this training, done). The card is written last, so a card that reads
    and names weights that are there means the training finished."""
    out = Path(cfg.output)
    try:
        card = read_card(out)
    except (BertserveError, ValueError, TypeError):  # none, or half-written by a killed run
        return False, []
    if card.variant is not None or not (out / WEIGHTS_FILE).is_file() or not (out / VALIDATION_FILE).is_file():
        return False, []
    earlier, now = _settings_of(card), cfg.run_settings()
    changed = sorted(k for k in earlier.keys() | now.keys() if earlier.get(k) != now.get(k))
    return True, [f"{k}: {earlier.get(k)!r} then, {now.get(k)!r} now" for k in changed]


def _train(options: dict[str, Any], progress: Progress) -> tuple[Any, bool]:
    """The training stage: (the card of the trained model, whether an earlier run was reused)."""
    import training
    from training.trainer import StepReporter, observe

    overwrite = bool(options.pop("overwrite", False))
    options.pop("resume", None)  # fit resumes an interrupted run by itself
    cfg = TrainConfig(**options, overwrite=True)  # checks the options; the output is checked below
    done, changed = finished_training(cfg)
    if done and not changed and not overwrite:
        card = read_card(cfg.output)
        progress.step(f"reusing the finished training: {cfg.output} holds one of the same settings and data "
                      "(--overwrite trains again)")
        return card, True
    if done and not overwrite:
        raise ConfigError(f"{cfg.output} holds a finished training with other settings or data "
                          f"({'; '.join(changed[:4])}): pass --overwrite to train again there, or give this "
                          "model another --name (or --output)")
    if not overwrite and cfg.last_checkpoint() is not None:
        progress.step(f"resuming the interrupted training: from its last checkpoint in {cfg.output}")
        cfg = dataclasses.replace(cfg, overwrite=False, resume=True)  # refuses checkpoints of other settings
    else:
        cfg = dataclasses.replace(cfg, overwrite=overwrite)  # refuses a non-empty directory unless --overwrite
    with observe(StepReporter(progress.training)):
        card = training.run_training(cfg)
    return card, False


def example_request(model_dir: Path, task: str) -> dict[str, Any]:
    """A request body for the task's route, made from a short held-out example."""
    spec = get_task(task)
    examples = load_task_examples(task, str(model_dir / VALIDATION_FILE), Columns(file_format="jsonl"))
    inputs = spec.split_examples(examples[:50])[0]
    shortest = min(inputs, key=lambda x: len(json.dumps(x)))
    return spec.request_body([shortest])


def curl(task: str, body: dict[str, Any], port: int) -> str:
    route = get_task(task).endpoint
    return (f"curl -s localhost:{port}{route} -H 'content-type: application/json' "
            f"-d {shlex.quote(json.dumps(body, ensure_ascii=False))}")


def serve_command(task: str, tag: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`bentoml serve` of the service with `tag` as the task's default model."""
    return ([sys.executable, "-m", "bentoml", "serve", "service:BertServe", "--port", str(port)],
            {f"BERTSERVE_MODEL_{task.upper()}": tag, "BENTOML_DO_NOT_TRACK": "true"})


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _served_names(info: dict[str, Any], name: str) -> list[str]:
    """The names under which a running service serves a version of store name `name`."""
    return [n for n, m in info["models"].items() if str(m["tag"]).partition(":")[0] == name]


def _running_service(port: int, name: str, task: str) -> ServiceClient:
    """The bertserve service already on `port`, checked (before any training) to be able to load
    the new version of `name` by a reload: reloading on, and `name` served or the task free."""
    import os

    client = ServiceClient(f"http://127.0.0.1:{port}", api_key=os.environ.get("BERTSERVE_API_KEY"))
    where = f"port {port}"
    try:
        info: dict[str, Any] | None = client.served()
    except Exception:  # whatever answers there (or does not), it is not a bertserve service
        info = None
    if not isinstance(info, dict) or info.get("service") != "bertserve":
        raise ConfigError(f"{where} is in use by something that is not a bertserve service: stop it, or pass "
                          "--port")
    if not info.get("admin_reload"):
        raise ConfigError(f"a bertserve service runs on {where} with reloading off: it keeps serving what it loaded. "
                          "Restart it with BERTSERVE_ADMIN_RELOAD=true (and BERTSERVE_API_KEY, set here too), "
                          "stop it, or pass --port to start another")
    if not _served_names(info, name) and any(m["task"] == task for m in info["models"].values()):
        others = ", ".join(f"{n}={m['tag']}" for n, m in info["models"].items())
        raise ConfigError(f"the service on {where} serves {task} models, none of them named {name!r}: a reload "
                          f"swaps in new versions of what it serves. Fit under a name it serves, or restart it "
                          f"with BERTSERVE_MODELS={others},{name}={name}:latest")
    return client


def _reload(client: ServiceClient, port: int, name: str, task: str, tag: str) -> dict[str, Any]:
    """POST /admin/reload on the running service (the versions of `name` it serves, or, when it
    has no model of the task, every served model: then the task's latest, the new one, comes in);
    the names now serving `tag` from every worker."""
    names = _served_names(client.served(), name)
    answer = client.reload(names or None)
    now = [n for n, m in client.served()["models"].items() if m["tag"] == tag]
    if not now:
        raise ConfigError(f"published {tag} and reloaded the service on port {port}, but it does not serve it "
                          f"(it serves {', '.join(answer['models']) or 'nothing'}): restart it with "
                          f"BERTSERVE_MODELS=...,{name}={tag}")
    return {"names": now, "workers": answer["workers"], "models": answer["models"], "task": task}


def run_fit(train_options: dict[str, Any], *, name: str, progress: Progress,
            export_options: dict[str, Any] | None = None, allow_weak: bool = False,
            serve: bool = False, port: int = 3000,
            start_service: Callable[[list[str], dict[str, str]], int] | None = None) -> dict[str, Any]:
    """Train, gate, export and publish model `name`; with `serve`, then serve it: a bertserve service
    already on `port` loads it by a reload (checked before training: reloading must be on there),
    else a new `bentoml serve` starts (blocking until it ends). `train_options` are TrainConfig's
    (its `output` defaults to runs/fit/NAME)."""
    from export.pipeline import export_model

    options = dict(train_options)
    options["output"] = str(options.get("output") or default_output(name))
    running = _running_service(port, name, options["task"]) if serve and _port_in_use(port) else None
    model_dir = Path(options["output"])
    kept = f"the trained model is kept in {model_dir}; run the same command again to continue from it"

    progress.stage("train", f"training {options['task']} on {options['train']} into {model_dir}")
    try:
        card, reused = _train(options, progress)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        saved = sorted(model_dir.glob("checkpoints/checkpoint-*/trainer_state.json"))
        note = (f"its checkpoints are kept in {model_dir / 'checkpoints'}: the same command resumes from the last "
                "one" if saved else "nothing was trained")
        raise _failed("train", exc, note) from exc
    metric = card.primary_metric
    progress.end_stage(f"validation {metric} {card.metrics.get(metric, float('nan')):.4f}"
                       + (" (reused)" if reused else ""))

    progress.stage("quality gate")
    quality = (card.training or {}).get("quality")
    try:
        gate(quality, allow_weak, where=f"the model in {model_dir}")
    except BertserveError as exc:
        raise _failed("quality gate", exc, f"the trained model is kept in {model_dir}: the same command with "
                      "--allow-weak publishes it without training again; other training flags train anew "
                      "(add --overwrite)") from exc
    progress.end_stage(_quality_note(quality) if quality is not None or get_task(card.task).baseline is None
                       else "not recorded by this (earlier) training: the export measures it")

    progress.stage("export", f"exporting {model_dir} as {name}")
    try:
        result = export_model(str(model_dir), name=name, allow_weak=allow_weak, on_step=progress.step,
                              **(export_options or {}))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # any failure here leaves the training as it is
        raise _failed("export", exc, kept) from exc
    progress.end_stage(f"published {result['tag']} ({result['variant']})")

    port_note = port if serve else 3000
    body = example_request(model_dir, card.task)
    command, env = serve_command(card.task, result["tag"], port_note)
    summary = {
        "tag": result["tag"],
        "task": card.task,
        "variant": result["variant"],
        "variants": result.get("variants", [result["variant"]]),
        "model_dir": str(model_dir),
        "reused_training": reused,
        "validation": {"metric": metric, "value": card.metrics.get(metric), "quality": quality},
        "parity": result["parity"],
        "serve": " ".join([*(f"{k}={v}" for k, v in env.items() if k.startswith("BERTSERVE_")), "bentoml",
                           *command[3:]]),
        "curl": curl(card.task, body, port_note),
        "wall_time": progress.summary(),
    }
    if running is not None:
        progress.stage("serve", f"the service on port {port} loads {result['tag']} (POST /admin/reload)")
        summary["reloaded"] = _reload(running, port, name, card.task, result["tag"])
        progress.end_stage(f"served as {', '.join(summary['reloaded']['names'])} by all "
                           f"{summary['reloaded']['workers']} worker(s)")
    elif serve:
        progress.stage("serve", f"starting bentoml serve on port {port} with {result['tag']} (Ctrl-C stops it)")
        progress.stream.write(render(summary) + "\n")  # before the service's own output takes the terminal
        runner = start_service or _start_service
        summary["serve_exit_code"] = runner(command, env)
    return summary


def _start_service(command: list[str], env: dict[str, str]) -> int:
    """Run the service until it ends. SIGTERM or Ctrl-C here reaches it as one SIGTERM: BentoML then
    stops its workers too, and finishes the requests in flight."""
    import os
    import signal

    cwd = ROOT if (ROOT / "bentofile.yaml").is_file() else None  # a checkout; else the installed package
    proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=cwd)

    def stop(signum: int, frame: Any) -> None:
        if proc.poll() is None and not getattr(stop, "sent", False):
            stop.sent = True  # type: ignore[attr-defined]
            proc.terminate()

    earlier = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for sig, handler in earlier.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _failed(stage: str, exc: BaseException, kept: str) -> FitError:
    what = str(exc) if isinstance(exc, BertserveError) else f"{type(exc).__name__}: {exc}"
    log.debug("stage %s failed", stage, exc_info=exc)
    return FitError(f"the {stage} stage failed: {what}\n{kept}")


def _quality_note(quality: dict[str, Any] | None) -> str:
    if quality is None:
        return "not gated for this task"
    if quality.get("note"):
        return str(quality["note"])
    verdict = "WEAK, published with --allow-weak" if quality["weak"] else "passed"
    return (f"{verdict}: {quality['metric']} {quality['value']:.4f} against {quality['baseline']:.4f} for "
            f"{quality['baseline_answer']} (needs {quality['required']:.4f})")


def render(summary: dict[str, Any]) -> str:
    """What fit prints: what was published, how good it is, how it runs and how to call it."""
    v = summary["validation"]
    lines = [f"published {summary['tag']} ({summary['task']}, {summary['variant']})"
             + (", from the earlier finished training" if summary["reused_training"] else ""),
             f"  validation {v['metric']}: {v['value']:.4f}   quality gate: {_quality_note(v['quality'])}"]
    others = [name for name in summary.get("variants", []) if name != summary["variant"]]
    if others:
        lines.append(f"  variants: {summary['variant']} (this machine's choice), {', '.join(others)}: a service "
                     "serves the fastest that runs on its hardware")
    for variant, info in summary["parity"].items():
        if variant == "pytorch":
            continue
        lines.append(f"  parity {variant:5s}: {'passed' if info.get('passed') else 'FAILED'}, drop "
                     f"{info.get('metric_drop_points', 0):.2f} points, agreement {info.get('agreement', 0):.4f}")
    wall = summary["wall_time"]
    stages = ", ".join(f"{k} {duration(s)}" for k, s in wall["stages_s"].items())
    lines.append(f"  wall time: {duration(wall['total_s'])} ({stages})")
    for stage, steps in wall["steps_s"].items():
        lines.append(f"    {stage}: " + ", ".join(f"{k} {duration(s)}" for k, s in steps.items()))
    if "reloaded" in summary:
        lines.append(f"  served now as {', '.join(summary['reloaded']['names'])} by the running service "
                     f"({summary['reloaded']['workers']} worker(s) reloaded)")
    lines.append(f"  serve it:  {summary['serve']}")
    lines.append(f"  call it:   {summary['curl']}")
    return "\n".join(lines)
