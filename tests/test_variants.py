"""Every variant that passes the gate is published in one store entry; the service serves the
fastest that runs where it runs (BERTSERVE_VARIANT pins one, BERTSERVE_CPU_ISA serves as a
smaller CPU would), and /info says what it measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bertserve.artifact import ONNX_FILE, REFERENCE_ONNX_FILE, read_card, verify_files
from bertserve.errors import ArtifactError
from bertserve.runtime import Pipeline
from bertserve.variants import (
    FP32,
    INT8,
    INT8_VNNI,
    choose,
    int8_for,
    machine_isa,
    time_one,
    why_not_here,
)
from service.models import load_model, verified_models
from service.settings import ServiceSettings
from tests.test_serve_process import ROOT, no_task_defaults, start_serve, stop_serve

# what an export publishes here: int8-vnni only where this CPU computes it exactly (the gate runs it)
VNNI_HERE = machine_isa() in ("vnni", "arm64")
PUBLISHED = {FP32, INT8} | ({INT8_VNNI} if VNNI_HERE else set())
VARIANTS = {FP32: {"passed": True, "device": "cpu"}, INT8: {"passed": True, "device": "cpu"},
            INT8_VNNI: {"passed": True, "device": "cpu"}}


def fixed(times: dict[str, float]):
    asked: list[tuple[str, float]] = []

    def measure(name: str, seconds: float) -> float:
        asked.append((name, seconds))
        return times[name]

    return measure, asked


def test_the_fastest_variant_that_runs_is_chosen_and_the_trial_is_shared_out():
    measure, asked = fixed({FP32: 9.0, INT8: 6.0, INT8_VNNI: 4.0})
    vnni = choose(VARIANTS, INT8_VNNI, pinned=None, isa="vnni", cuda=False, measure=measure, budget_s=3.0)
    assert vnni.served == INT8_VNNI and vnni.reason == "fastest measured here" and not vnni.skipped
    assert next(name for name, _ in asked) == INT8_VNNI and all(s == 1.0 for _, s in asked)
    measure, asked = fixed({FP32: 9.0, INT8: 6.0, INT8_VNNI: 4.0})
    avx2 = choose(VARIANTS, INT8_VNNI, pinned=None, isa="avx2", cuda=False, measure=measure, budget_s=3.0)
    assert avx2.served == INT8 and set(avx2.measured_ms) == {FP32, INT8}
    assert "avx512_vnni" in avx2.skipped[INT8_VNNI] and [n for n, _ in asked] == [FP32, INT8]
    public = avx2.public()
    assert public["measured_ms"] == {FP32: 9.0, INT8: 6.0} and INT8_VNNI in public["not_run"]


def test_a_failed_or_foreign_variant_is_never_served_and_a_pin_says_why():
    variants = {**VARIANTS, INT8: {"passed": False, "device": "cpu"}, "fp16": {"passed": True, "device": "cuda"}}
    measure, asked = fixed({})
    only = choose(variants, INT8, pinned=None, isa="avx2", cuda=False, measure=measure, budget_s=1.0)
    assert only.served == FP32 and only.reason == "the only variant that runs here" and not asked
    assert set(only.skipped) == {INT8, INT8_VNNI, "fp16"} and "parity gate" in only.skipped[INT8]
    assert "GPU" in only.skipped["fp16"]
    pinned = choose(variants, INT8, pinned=FP32, isa="avx2", cuda=False, measure=measure, budget_s=1.0)
    assert pinned.served == FP32 and pinned.reason == "BERTSERVE_VARIANT"
    exported = choose(VARIANTS, INT8_VNNI, pinned="export", isa="vnni", cuda=False, measure=measure, budget_s=1.0)
    assert exported.served == INT8_VNNI and not asked
    with pytest.raises(ValueError, match="failed the parity gate"):
        choose(variants, INT8, pinned=INT8, isa="avx2", cuda=False, measure=measure, budget_s=1.0)
    with pytest.raises(ValueError, match="does not have"):
        choose(variants, INT8, pinned="int4", isa="avx2", cuda=False, measure=measure, budget_s=1.0)
    with pytest.raises(ValueError, match="none of its variants runs here"):
        choose({INT8_VNNI: VARIANTS[INT8_VNNI]}, INT8_VNNI, pinned=None, isa="avx2", cuda=False,
               measure=measure, budget_s=1.0)
    assert why_not_here(INT8_VNNI, VARIANTS[INT8_VNNI], "arm64", cuda=False) is None


def test_time_one_is_bounded_and_takes_the_median():
    calls: list[list[str]] = []
    ms = time_one(lambda xs: calls.append(xs), ["a", "b"], budget_s=0.05)
    assert ms >= 0 and len(calls) >= 4 and calls[0] == ["a"] and calls[2] == ["b"]


def test_export_publishes_every_passing_variant_in_one_checksummed_entry(published_single):
    path = Path(published_single["artifact"])
    card = read_card(path)
    assert card.variant == int8_for(machine_isa())  # the exporting machine's own choice is model.onnx
    assert set(card.variants) == PUBLISHED, card.parity["variants"].keys()
    assert card.variants[card.variant]["file"] == ONNX_FILE and card.variants[FP32]["file"] == REFERENCE_ONNX_FILE
    for name, info in card.variants.items():
        assert info["passed"] and info["file"] in card.files and card.parity["variants"][name]["passed"]
    assert card.variants[INT8]["quantization"] == "per-token-7bit"
    if VNNI_HERE:
        assert card.variants[INT8_VNNI]["quantization"] == "per-token-8bit"
    else:
        assert "cannot compute it exactly" in card.parity["not_built"][INT8_VNNI]
    verify_files(path, card)
    # the stored held-out inputs the service times them on are never shown at /info
    assert card.samples and all(isinstance(s, str) for s in card.samples)
    assert "samples" not in card.public()
    texts = ["the movie was great", "a boring plot"]
    answers = {name: [r["label"] for r in Pipeline.from_artifact(path, card, threads=1, variant=name).predict(texts)]
               for name in card.variants}
    assert all(labels == ["positive", "negative"] for labels in answers.values()), answers


@pytest.fixture()
def unpinned(monkeypatch):
    """The served set named by BERTSERVE_MODELS alone (the session's service fixture pins each task's)."""
    for name, value in no_task_defaults().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BERTSERVE_VARIANT", raising=False)  # conftest pins the exported one


def test_the_service_serves_the_fastest_variant_that_runs_on_an_avx2_cpu(published_single, unpinned):
    settings = ServiceSettings(models=f"s={published_single['tag']}", cpu_isa="avx2", variant_trial_s=1.0, threads=1)
    [entry] = verified_models(settings, warn=False)
    model = load_model(entry, settings)
    choice = model.choice
    assert choice is not None and choice.reason == "fastest measured here"
    assert set(choice.measured_ms) == {FP32, INT8} and (INT8_VNNI in choice.skipped) == VNNI_HERE
    assert model.variant == choice.served == min(choice.measured_ms, key=choice.measured_ms.__getitem__)
    assert choice.seconds < 5, choice  # the bound the start-up pays per model
    assert model.pipeline.predict(["the movie was great"])[0]["label"] == "positive"


def test_a_pin_is_served_or_refused_at_start(published_single, unpinned):
    tag = published_single["tag"]
    settings = ServiceSettings(models=f"s={tag}", variant=FP32, threads=1, shadow_rate=0.5)
    model = load_model(verified_models(settings, warn=False)[0], settings)
    assert model.variant == FP32 and model.choice is not None and model.choice.reason == "BERTSERVE_VARIANT"
    assert model.shadow is None and "serves the fp32 variant" in str(model.shadow_off)
    refusal = r"BERTSERVE_VARIANT=int8-vnni cannot be served.*avx512_vnni" if VNNI_HERE else "no such variant"
    with pytest.raises(ArtifactError, match=refusal):
        verified_models(ServiceSettings(models=f"s={tag}", variant=INT8_VNNI, cpu_isa="avx2"), warn=False)
    with pytest.raises(ArtifactError, match="no such variant"):
        verified_models(ServiceSettings(models=f"s={tag}", variant="fp16"), warn=False)


def test_bentoml_serve_on_an_avx2_cpu_says_what_it_measured_at_info(published_single, tmp_path):
    # BERTSERVE_VARIANT="": unset (conftest pins the exported variant)
    url, proc = start_serve(tmp_path, **no_task_defaults(), BERTSERVE_MODELS=f"s={published_single['tag']}",
                            BERTSERVE_CPU_ISA="avx2", BERTSERVE_VARIANT_TRIAL_S="1", BERTSERVE_SHUTDOWN_DRAIN_S="0",
                            BERTSERVE_VARIANT="")
    try:
        info = httpx.get(f"{url}/info", timeout=10).json()["models"]["s"]
        assert info["variant"] in (FP32, INT8) and info["variants"]["served"] == info["variant"]
        assert set(info["variants"]["measured_ms"]) == {FP32, INT8}
        assert (INT8_VNNI in info["variants"]["not_run"]) == VNNI_HERE
        assert set(info["card"]["variants"]) == PUBLISHED and "samples" not in info["card"]
        answer = httpx.post(f"{url}/classify", json={"texts": ["great wonderful"]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["results"][0]["label"] == "positive"
    finally:
        stop_serve(proc)


def test_bentoml_serve_refuses_to_start_with_a_pin_that_cannot_run(published_single):
    env = {**no_task_defaults(), "BERTSERVE_MODELS": f"s={published_single['tag']}", "BERTSERVE_VARIANT": INT8_VNNI,
           "BERTSERVE_CPU_ISA": "avx2"}
    done = subprocess.run([sys.executable, "-m", "bentoml", "serve", "--port", "0"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    refusal = "BERTSERVE_VARIANT=int8-vnni cannot be served" if VNNI_HERE else "has no such variant"
    assert refusal in done.stdout + done.stderr


@pytest.mark.parametrize("isa", ["avx2", "vnni"])
def test_an_export_builds_the_int8_variants_this_cpu_computes_exactly(isa, monkeypatch):
    """The gate runs each variant as it will be served: on a CPU without VNNI the 8-bit build would
    be computed with saturating kernels, so it is not built (and a request for it is refused)."""
    from bertserve.errors import ConfigError
    from export import pipeline

    monkeypatch.setattr(pipeline, "machine_isa", lambda: isa)
    builds, not_built = pipeline.int8_builds("auto", reference=True, gpu=False)
    if isa == "vnni":
        assert builds == (INT8, INT8_VNNI) and not not_built
        assert pipeline.int8_builds("auto", reference=False, gpu=False) == ((INT8_VNNI,), {})
    else:
        assert builds == (INT8,) and "cannot compute it exactly" in not_built[INT8_VNNI]
        assert pipeline.int8_builds("auto", reference=False, gpu=False) == ((INT8,), {})
        with pytest.raises(ConfigError, match="--variant int8-vnni: this CPU"):
            pipeline.int8_builds(INT8_VNNI, reference=True, gpu=False)
    assert pipeline.int8_builds(INT8, reference=True, gpu=False) == ((INT8,), {})
