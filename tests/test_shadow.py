"""Shadow parity: served requests re-run on the fp32 reference off the request's path, the
disagreement counted with the task's own measure (in /info and /metrics)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import pytest

from bertserve.artifact import REFERENCE_ONNX_FILE, TOKENIZER_FILE, read_card, verify_files
from bertserve.errors import ConfigError
from bertserve.runtime import LongText, OnnxBackend, Pipeline, TextEncoder
from service.models import shadow_of
from service.settings import ServiceSettings
from service.shadow import Shadow
from tests.conftest import FILLER, POSITIVE
from tests.test_serve_process import start_serve, stop_serve


def variants(path: Path) -> tuple[Pipeline, Pipeline]:
    """The published (int8) pipeline and the fp32 reference stored beside it."""
    card = read_card(path)
    served = Pipeline.from_artifact(path, card, threads=1)
    reference = Pipeline(card, TextEncoder(path / TOKENIZER_FILE, card.max_length),
                         OnnxBackend(path / REFERENCE_ONNX_FILE, threads=1))
    return served, reference


def test_export_stores_the_fp32_reference_beside_int8_checksummed(published_single):
    path = Path(published_single["artifact"])
    card = read_card(path)
    assert card.variant.startswith("int8")  # the int8 build for this CPU
    assert REFERENCE_ONNX_FILE in card.files
    verify_files(path, card)
    fp32 = sorted((path.parent / "fp32").glob("*.onnx"))
    assert fp32 and fp32[0].read_bytes() == (path / REFERENCE_ONNX_FILE).read_bytes(), "the gated fp32 variant"
    _, reference = variants(path)
    texts = ["the movie was great", "a boring plot"]
    assert [r["label"] for r in reference.predict(texts)] == ["positive", "negative"]


def disagreements(path: Path, n: int = 3000) -> tuple[list[str], list[str]]:
    """Texts on which the int8 model and its fp32 reference give different labels, and texts on
    which they agree, found by trying many near the decision boundary (no sentiment word, or a
    weak one among many filler words)."""
    served, reference = variants(path)
    rng = random.Random(7)
    texts = list(dict.fromkeys(" ".join(rng.sample(FILLER, rng.randint(2, 9)) + rng.sample(POSITIVE, rng.randint(0, 1)))
                               for _ in range(n)))
    a = [r["label"] for r in served.predict(texts, batch_size=1)]
    b = [r["label"] for r in reference.predict(texts, batch_size=1)]
    flips = [t for t, x, y in zip(texts, a, b, strict=True) if x != y]
    same = [t for t, x, y in zip(texts, a, b, strict=True) if x == y]
    return flips, same


def metric(text: str, name: str, model: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"{name} for {model} not in /metrics")


def test_a_served_model_counts_its_disagreement_with_fp32_on_live_requests(published_single, tmp_path):
    path = Path(published_single["artifact"])
    flips, same = disagreements(path)
    assert flips, "no text found on which int8 and fp32 disagree: the search needs more candidates"
    k = min(5, len(flips))
    sent = flips[:k] + same[:15]
    url, proc = start_serve(tmp_path, BERTSERVE_MODEL_CLASSIFICATION=published_single["tag"],
                            BERTSERVE_SHADOW_RATE="1")
    try:
        info = httpx.get(f"{url}/info").json()["models"]["classification"]["shadow"]
        assert info["samples"] == 0 and info["rate"] == 1.0
        for text in sent:  # one per request, as live traffic
            assert httpx.post(f"{url}/classify", json={"texts": [text]}).status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = httpx.get(f"{url}/info").json()["models"]["classification"]["shadow"]
            if info["samples"] + info["dropped"] >= len(sent):
                break
            time.sleep(0.2)
        assert info["dropped"] == 0 and info["samples"] == len(sent), info
        assert info["agreement"] == pytest.approx(15 / len(sent), abs=1e-5), info
        assert info["mean_difference"] > 0
        metrics = httpx.get(f"{url}/metrics").text
        assert metric(metrics, "bertserve_shadow_samples_total", "classification") == len(sent)
        assert metric(metrics, "bertserve_shadow_agreements_total", "classification") == 15
        assert metric(metrics, "bertserve_shadow_agreement", "classification") == pytest.approx(15 / len(sent))
        assert metric(metrics, "bertserve_shadow_difference_count", "classification") == len(sent)
    finally:
        stop_serve(proc)


def test_the_shadow_queue_is_bounded_and_drops_are_counted(published_single):
    path = Path(published_single["artifact"])
    card = read_card(path)
    shadow = Shadow("bounded", path, card, rate=1.0, capacity=2)
    shadow._thread = object()  # type: ignore[assignment]  # no worker: the queue only fills
    served = Pipeline.from_artifact(path, card, threads=1)
    texts = ["the movie was great"]
    for _ in range(5):
        shadow.offer(texts, served.outputs(texts), LongText())
    assert shadow.dropped == 3 and shadow.info()["queued"] == 2
    shadow.compare(shadow._queue.get_nowait())
    assert shadow.samples == 1 and shadow.agreements == 1 and shadow.info()["agreement"] == 1.0


def test_a_model_without_its_reference_is_served_unshadowed_and_says_why(published_single, tmp_path):
    path = Path(published_single["artifact"])
    card = read_card(path)
    bare = tmp_path / "bare"
    bare.mkdir()
    for item in path.iterdir():
        if item.name != REFERENCE_ONNX_FILE:
            (bare / item.name).write_bytes(item.read_bytes())
    with pytest.raises(ConfigError, match="no fp32 reference"):
        Shadow("bare", bare, card, rate=0.5, capacity=4)
    settings = ServiceSettings(shadow_rate=0.5)
    shadow, off = shadow_of("bare", bare, card, settings)
    assert shadow is None and off is not None and "export it again" in off
    shadow, off = shadow_of("full", path, card, settings)
    assert shadow is not None and off is None
    assert shadow_of("full", path, card, ServiceSettings()) == (None, None)
