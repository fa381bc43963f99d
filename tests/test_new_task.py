"""A new task defined entirely in this module: "count the words", a regression head over the
encoder. It is registered here and then trained, exported through the parity gate, served by a
real `bentoml serve` (which finds it through BERTSERVE_TASK_MODULES), called on its own route,
evaluated over HTTP, benched and load-tested with Locust, without any project file naming it.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from bertserve.metrics import regression_metrics
from bertserve.registry import (
    TASK_MODULES_ENV,
    Route,
    Scenario,
    TaskSpec,
    register,
    tasks,
    unregister,
)
from bertserve.variants import int8_for, machine_isa

INT8_HERE = int8_for(machine_isa())  # the int8 build bench times on this CPU
ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "movie", "book", "film", "was", "really", "plot", "story", "game", "team", "time", "day"]


class CountRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(description="texts whose words to count")
    model: str | None = None


class CountResult(BaseModel):
    count: float


class CountResponse(BaseModel):
    model: str
    results: list[CountResult]


SCALE = 10.0  # the head learns count / 10: targets near its initial outputs train in few steps


def postprocess(outputs: Any, card: Any) -> list[dict[str, Any]]:
    return [{"count": SCALE * float(row[0])} for row in np.asarray(outputs, dtype=np.float64)]


def score(results: Sequence[dict[str, Any]], gold: Sequence[Any], card: Any) -> dict[str, float]:
    return regression_metrics(np.array([SCALE * float(g) for g in gold]), np.array([r["count"] for r in results]))


def read_examples(source: str, columns: Any, bad: Any = None) -> list[dict[str, Any]]:
    from bertserve.data import load_examples

    return load_examples(source, columns, bad)


async def count(ctx: Any, body: CountRequest) -> CountResponse:
    model = ctx.model(body.model)
    ctx.check(body.texts)
    _, outputs = await ctx.infer(model, body.texts)
    return CountResponse(model=model.tag, results=[CountResult(**r) for r in postprocess(outputs, model.card)])


def check(payload: dict[str, Any], body: Any) -> str | None:
    answer = CountResponse.model_validate(body)
    return None if len(answer.results) == len(payload["texts"]) else "one count per text expected"


def train(cfg: Any) -> Any:
    """The PyTorch side: the project's sequence-classification head, as a regression."""
    from training.classification import train as train_head

    return train_head(dataclasses.replace(cfg, problem_type="regression"))


SPEC = TaskSpec(
    name="wordcount",
    auto_model="AutoModelForSequenceClassification",
    optimum_task="text-classification",
    postprocess=postprocess,
    score=score,
    primary_metric=lambda card: "spearman",
    split_examples=lambda examples: ([ex["text"] for ex in examples], [ex["label"] for ex in examples]),
    read_examples=read_examples,
    agree=lambda x, y: abs(x["count"] - y["count"]) <= 0.5,
    routes=(Route("/count", CountRequest, CountResponse, count, summary="Count the words of each text",
                  scenario=Scenario(build=lambda src: {"texts": src.texts()}, check=check)),),
    max_length=32,
    trainer=__name__,
)
# How a server or a load generator in another process finds this module: BERTSERVE_TASK_MODULES
# imports it by this name, and the import registers the task, as a plugin package's would. Under
# pytest (imported as `test_new_task`) the `registered` fixture registers it for these tests only,
# so that the other tests' service does not grow a route no model serves.
MODULE = "tests.test_new_task"
if __name__ == MODULE:
    register(SPEC)


@pytest.fixture(scope="module", autouse=True)
def registered():
    register(SPEC)
    yield SPEC
    unregister(SPEC.name)


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 10)
        out.append({"text": " ".join(rng.choices(WORDS, k=k)), "label": k / SCALE})
    return out


@pytest.fixture(scope="module")
def counted(tiny_base, tmp_path_factory):
    from export.pipeline import export_model
    from tests.conftest import tiny_config, write_jsonl
    from training import run_training

    directory = tmp_path_factory.mktemp("wordcount")
    files = {"train": write_jsonl(directory / "train.jsonl", rows(240, 11)),
             "validation": write_jsonl(directory / "validation.jsonl", rows(60, 12)),
             "test": write_jsonl(directory / "test.jsonl", rows(60, 13))}
    output = directory / "model"
    card = run_training(tiny_config(tiny_base, files["train"], output, task="wordcount",
                                    validation=str(files["validation"]), epochs=30, max_length=32))
    exported = export_model(str(output), name="tiny-wordcount", output=str(directory / "exported"))
    return {"files": files, "trained": output, "card": card, "exported": exported}


def test_the_task_is_registered_and_found_by_name():
    assert tasks()["wordcount"] is SPEC


def test_a_new_task_trains_and_passes_the_parity_gate(counted):
    card, exported = counted["card"], counted["exported"]
    assert card.task == "wordcount" and card.primary_metric == "spearman"
    assert card.metrics["spearman"] > 0.8, card.metrics  # it learned to count
    parity = exported["parity"]
    assert parity[exported["variant"]]["passed"] and exported["tag"].startswith("tiny-wordcount:")


def test_a_new_task_is_served_evaluated_benched_and_load_tested(counted, tmp_path):
    from bertserve.data import Columns
    from bertserve.evaluate import evaluate
    from export.bench import run_bench
    from tests.test_serve_process import start_serve, stop_serve

    tag = counted["exported"]["tag"]
    # only this model: the task defaults other tests pin (BERTSERVE_MODEL_<TASK>) are cleared
    no_task_defaults = {f"BERTSERVE_MODEL_{t.upper()}": "" for t in tasks()}
    url, proc = start_serve(tmp_path, **{TASK_MODULES_ENV: MODULE, "BERTSERVE_MODELS": f"counter={tag}",
                                         "BERTSERVE_SHUTDOWN_DRAIN_S": "0", **no_task_defaults})
    try:
        paths = httpx.get(f"{url}/openapi.json", timeout=10).json()["paths"]
        assert "/count" in paths and "/classify" in paths  # the new route beside the built-in ones
        answer = httpx.post(f"{url}/count", json={"texts": ["the movie", "the plot the story was the team day time"]},
                            timeout=30)
        assert answer.status_code == 200, answer.text
        counts = [r["count"] for r in answer.json()["results"]]
        assert answer.json()["model"] == tag and counts[1] > counts[0]
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["models"]["counter"]["task"] == "wordcount" and info["defaults"] == {"wordcount": "counter"}

        over_http = evaluate(url, str(counted["files"]["test"]), Columns(), model="counter")
        assert over_http["metrics"]["spearman"] > 0.8, over_http

        csv_prefix = tmp_path / "locust"
        env = {**os.environ, TASK_MODULES_ENV: MODULE, "LOADTEST_ENDPOINTS": "/count", "PYTHONPATH": str(ROOT),
               "LOADTEST_SEED": "1"}
        locust = subprocess.run([sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless",
                                 "--host", url, "-u", "2", "-r", "2", "-t", "3s", "--only-summary",
                                 "--csv", str(csv_prefix)], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
        assert locust.returncode == 0, locust.stderr[-2000:]
        with open(f"{csv_prefix}_stats.csv") as fh:
            stats = {row["Name"]: row for row in csv.DictReader(fh)}
        assert int(stats["/count"]["Request Count"]) > 0 and int(stats["/count"]["Failure Count"]) == 0
    finally:
        stop_serve(proc)

    bench = run_bench("wordcount", model=str(counted["trained"]), data=str(counted["files"]["test"]),
                      repeats=1, output_dir=str(tmp_path / "bench"))
    assert {"onnx_fp32", f"onnx_{INT8_HERE}"} <= set(bench["paths"]) and "pipeline" not in bench["paths"]
    assert all(row["seq_per_s"] > 0 for row in bench["paths"].values())
