"""The bertserve BentoML service: `bentoml serve` from the repository root starts it.

Routes are a FastAPI app mounted into the BentoML service (BentoML's ASGI integration), so that
requests are validated by the shared pydantic schemas and every error has the one body shape.
BentoML provides the server, workers, `/livez`, `/readyz` and `/metrics`; models load once, in
`__init__`, and the service is ready only after each has run a warm-up batch.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio
import bentoml
import numpy as np
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from bertserve import __version__
from bertserve.errors import ArtifactError, NotReadyError, TimeoutError_, ValidationError
from bertserve.runtime import Encoded
from bertserve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    EmbedRequest,
    EmbedResponse,
    InfoResponse,
    ModelInfo,
    NerRequest,
    NerResponse,
    NerResult,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIUsage,
    QaRequest,
    QaResponse,
    QaResult,
    SimilarityRequest,
    SimilarityResponse,
)
from bertserve.tasks import ner, similarity
from service import observability
from service.http import ERROR_RESPONSES, Guard, check_texts, install_error_handlers
from service.lifecycle import LIFECYCLE
from service.models import LoadedModel, load_models, verified_models
from service.settings import ServiceSettings

log = logging.getLogger("bertserve.service")
SETTINGS = ServiceSettings()
# Requests up to this many characters are tokenized on the event loop (tens of microseconds);
# a thread hand-off costs more than that under load. Larger ones go to a worker thread.
INLINE_TOKENIZE_CHARS = 2_000


def _characters(inputs: Sequence[Any]) -> int:
    """Characters to tokenize: texts, or the string fields of items (QA's question and context)."""
    return sum(len(x) if isinstance(x, str) else sum(len(v) for v in x.values() if isinstance(v, str))
               for x in inputs)

app = FastAPI(
    title="bertserve",
    version=__version__,
    description="Fine-tuned BERT-family encoders behind a batched HTTP API.",
    docs_url="/docs/api",
    redoc_url=None,
    openapi_url="/openapi.json",
)
install_error_handlers(app)
app.add_middleware(Guard, settings=SETTINGS, lifecycle=LIFECYCLE)
if SETTINGS.cors_origins:  # off unless origins are configured
    app.add_middleware(CORSMiddleware, allow_origins=SETTINGS.cors_origins, allow_methods=["GET", "POST"],
                       allow_headers=["authorization", "content-type"])


@bentoml.service(name="bertserve", workers=1, traffic={"timeout": 60})
@bentoml.asgi_app(app, path="/")
class BertServe:
    def __init__(self) -> None:
        self.settings = SETTINGS  # the HTTP guard reads the same object
        self.lifecycle = LIFECYCLE
        self.lifecycle.loaded = False
        self.models: dict[str, LoadedModel] = load_models(self.settings)
        self.lifecycle.loaded = True
        self.lifecycle.drain_on_sigterm(self.settings.shutdown_drain_s)

    @bentoml.on_deployment
    def check_models() -> None:
        """Once, in `bentoml serve`'s own process, before any worker starts: a tampered, truncated or
        missing model file, or a configured tag that is not published, stops the server here with
        a message naming it (a worker failing the same check would be restarted in a loop)."""
        try:
            verified_models(SETTINGS)
        except ArtifactError as exc:
            raise SystemExit(f"bertserve cannot start: {exc}") from None

    def __is_ready__(self) -> bool:
        return self.lifecycle.ready  # false while loading and once SIGTERM has come (draining)

    def _model(self, task: str) -> LoadedModel:
        if not self.lifecycle.loaded:
            raise NotReadyError("the service is starting; retry shortly")
        model = self.models.get(task)
        if model is None:
            raise NotReadyError(
                f"no {task} model is served: publish one with `bertserve train {task}` and "
                f"`bertserve export`, or set BERTSERVE_MODEL_{task.upper()} to a published tag"
            )
        return model

    def _check(self, texts: Sequence[str], field: str = "texts", item: str = "text", limit: int | None = None,
               document: bool = False) -> None:
        s = self.settings
        max_chars, name = ((s.max_chars_per_document, "BERTSERVE_MAX_CHARS_PER_DOCUMENT") if document
                           else (s.max_chars_per_text, "BERTSERVE_MAX_CHARS_PER_TEXT"))
        check_texts(texts, limit or s.max_texts_per_request, max_chars, field, item, name)

    async def _infer(self, model: LoadedModel, inputs: Sequence[Any],
                     truncate: bool = True) -> tuple[list[list[Encoded]], Any]:
        """Featurize (off the event loop), run every window through the shared batcher, and hand
        back the features and the outputs in the shape the task's post-processing takes."""
        budget = self.settings.request_timeout_s
        try:
            with anyio.fail_after(budget):
                started = time.perf_counter()
                if _characters(inputs) <= INLINE_TOKENIZE_CHARS:
                    features = model.pipeline.featurize(list(inputs), truncate)
                else:
                    features = await anyio.to_thread.run_sync(model.pipeline.featurize, list(inputs), truncate)
                observability.record(model.task, "tokenize", time.perf_counter() - started)
                rows = await model.batcher([item for group in features for item in group])
        except TimeoutError:
            raise TimeoutError_(f"the request took longer than {budget:g} s (BERTSERVE_REQUEST_TIMEOUT_S): "
                                "send fewer or shorter texts, or retry later") from None
        return features, model.pipeline.assemble(inputs, features, rows)

    async def _vectors(self, texts: Sequence[str], truncate: bool,
                       normalize: bool = True) -> tuple[LoadedModel, list[Encoded], np.ndarray]:
        model = self._model("similarity")
        features, outputs = await self._infer(model, texts, truncate)
        return model, [group[0] for group in features], similarity.embed(outputs, normalize)

    @app.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES, response_model_exclude_none=True,
              summary="Classify texts (single-label, multi-label or regression)")
    async def classify(self, body: ClassifyRequest) -> ClassifyResponse:
        model = self._model("classification")
        self._check(body.texts)
        features, outputs = await self._infer(model, body.texts, body.truncate)
        results = model.pipeline.spec.postprocess(outputs, model.card)
        return ClassifyResponse(
            model=model.tag,
            results=[ClassifyResult(**r, truncated=group[0].truncated) for r, group in zip(results, features, strict=True)],
        )

    @app.post("/ner", response_model=NerResponse, responses=ERROR_RESPONSES,
              summary="Named entities with exact character offsets (texts of any length up to the limit)")
    async def ner(self, body: NerRequest) -> NerResponse:
        model = self._model("ner")
        self._check(body.texts, document=True)
        _, outputs = await self._infer(model, body.texts)
        results = await anyio.to_thread.run_sync(model.pipeline.spec.postprocess, outputs, model.card)
        return NerResponse(model=model.tag, results=[NerResult(**r) for r in results])

    @app.post("/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES,
              summary="Sentence embeddings (mean-pooled, L2-normalized unless normalize=false)")
    async def embed(self, body: EmbedRequest) -> EmbedResponse:
        self._check(body.texts)
        model, items, vectors = await self._vectors(body.texts, body.truncate, body.normalize)
        return EmbedResponse(model=model.tag, dimensions=vectors.shape[1], embeddings=vectors.tolist(),
                             truncated=[item.truncated for item in items])

    @app.post("/similarity", response_model=SimilarityResponse, responses=ERROR_RESPONSES,
              summary="Cosine similarity of each sentence to a source sentence")
    async def similarity(self, body: SimilarityRequest) -> SimilarityResponse:
        self._check(body.sentences, "sentences", "sentence")
        self._check([body.source_sentence], "source_sentence", "source_sentence", limit=1)
        model, _, vectors = await self._vectors([*body.sentences, body.source_sentence], body.truncate)
        return SimilarityResponse(model=model.tag, scores=(vectors[:-1] @ vectors[-1]).tolist())

    @app.post("/qa", response_model=QaResponse, responses=ERROR_RESPONSES, response_model_exclude_none=True,
              summary="Extractive question answering over contexts of any length up to the limit")
    async def qa(self, body: QaRequest) -> QaResponse:
        model = self._model("qa")
        self._check([item.question for item in body.items], "items", "question")
        self._check([item.context for item in body.items], "items", "context", document=True)
        items = [item.model_dump() for item in body.items]
        _, outputs = await self._infer(model, items)
        results = await anyio.to_thread.run_sync(model.pipeline.spec.postprocess, outputs, model.card)
        return QaResponse(model=model.tag, results=[QaResult(**r) for r in results])

    @app.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse, responses=ERROR_RESPONSES,
              summary="OpenAI-compatible embeddings")
    async def openai_embeddings(self, body: OpenAIEmbeddingRequest) -> OpenAIEmbeddingResponse:
        texts = [body.input] if isinstance(body.input, str) else body.input
        self._check(texts, "input", "input")
        model, items, vectors = await self._vectors(texts, truncate=True)
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            raise ValidationError(f"dimensions={body.dimensions}, but this model's embeddings have "
                                  f"{vectors.shape[1]}: leave dimensions out or send {vectors.shape[1]}")
        tokens = sum(item.n_tokens for item in items)
        data = [OpenAIEmbedding(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode()
                                if body.encoding_format == "base64" else v.tolist())
                for i, v in enumerate(vectors)]
        return OpenAIEmbeddingResponse(data=data, model=model.tag,
                                       usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens))

    @app.get("/info", response_model=InfoResponse, summary="Served models: task, labels, variant, parity, metrics")
    async def info(self) -> InfoResponse:
        return InfoResponse(
            version=__version__,
            models={
                task: ModelInfo(tag=m.tag, task=task, variant=m.card.variant, demo=m.card.demo,
                                providers=list(m.pipeline.backend.providers), card=m.card.public(),
                                entity_types=ner.entity_types(m.card.labels) if task == "ner" else None)
                for task, m in self.models.items()
            },
        )

