"""The baseline users would otherwise run: a `transformers` pipeline behind a small FastAPI server.

    BASELINE_MODEL=DIR uvicorn loadtests.baseline_server:app --port 3100

DIR is a trained classification directory (what `bertserve train` writes, or any HF model
directory). `/classify` takes and answers bertserve's shapes, so the same Locust checks apply.
PyTorch fp32, each request through the pipeline as it comes, no batching across requests: what
the Hugging Face examples plus a hand-written server give. `/readyz` for the load-test runner.
Not part of the service (it imports torch); `loadtests/steps.py` starts it for comparisons.
"""

from __future__ import annotations

import os
import threading

import torch
from fastapi import FastAPI
from transformers import pipeline

from bertserve.schemas import ClassifyRequest, ClassifyResponse, ClassifyResult

MAX_LENGTH = 128
BATCH_SIZE = 32

app = FastAPI(title="baseline: transformers pipeline")
_pipe = pipeline("text-classification", model=os.environ["BASELINE_MODEL"], device=-1, dtype=torch.float32,
                 top_k=None)
# PyTorch already uses every core within one call; concurrent calls would only fight over them.
_lock = threading.Lock()


@app.get("/readyz")
def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/classify", response_model=ClassifyResponse, response_model_exclude_none=True)
def classify(body: ClassifyRequest) -> ClassifyResponse:
    with _lock:
        outputs = _pipe(body.texts, batch_size=BATCH_SIZE, truncation=True, max_length=MAX_LENGTH)
    results = []
    for scores in outputs:
        best = max(scores, key=lambda s: s["score"])
        results.append(ClassifyResult(label=best["label"], score=best["score"],
                                      scores={s["label"]: s["score"] for s in scores}))
    return ClassifyResponse(model="baseline:" + os.path.basename(os.environ["BASELINE_MODEL"]), results=results)
