"""The bertserve BentoML service: `bentoml serve` from the repository root starts it.

Routes are a FastAPI app mounted into the BentoML service (BentoML's ASGI integration), so that
requests are validated by the shared pydantic schemas and every error has the one body shape.
BentoML provides the server, workers, `/livez`, `/readyz` and `/metrics`; models load once, in
`__init__`, and the service is ready only after each has run a warm-up batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import bentoml
from fastapi import FastAPI

from bertserve import __version__
from bertserve.errors import NotReadyError
from bertserve.runtime import Encoded
from bertserve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    InfoResponse,
    ModelInfo,
)
from service.http import ERROR_RESPONSES, Guard, check_texts, install_error_handlers
from service.models import LoadedModel, load_models
from service.settings import ServiceSettings

log = logging.getLogger("bertserve.service")
SETTINGS = ServiceSettings()

app = FastAPI(
    title="bertserve",
    version=__version__,
    description="Fine-tuned BERT-family encoders behind a batched HTTP API.",
    docs_url="/docs/api",
    redoc_url=None,
    openapi_url="/openapi.json",
)
install_error_handlers(app)
app.add_middleware(Guard, max_bytes=SETTINGS.max_request_bytes)


@bentoml.service(name="bertserve", workers=1, traffic={"timeout": 60})
@bentoml.asgi_app(app, path="/")
class BertServe:
    def __init__(self) -> None:
        self.settings = ServiceSettings()
        self.ready = False
        self.models: dict[str, LoadedModel] = load_models(self.settings)
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    def _model(self, task: str) -> LoadedModel:
        if not self.ready:
            raise NotReadyError("the service is starting or shutting down; retry shortly")
        model = self.models.get(task)
        if model is None:
            raise NotReadyError(
                f"no {task} model is served: publish one with `bertserve train {task}` and "
                f"`bertserve export`, or set BERTSERVE_MODEL_{task.upper()} to a published tag"
            )
        return model

    async def _encode(self, model: LoadedModel, texts: Sequence[str], truncate: bool) -> list[Encoded]:
        check_texts(texts, self.settings.max_texts_per_request, self.settings.max_chars_per_text)
        return await anyio.to_thread.run_sync(model.pipeline.encoder.encode, list(texts), truncate)

    @app.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES, response_model_exclude_none=True,
              summary="Classify texts (single-label, multi-label or regression)")
    async def classify(self, body: ClassifyRequest) -> ClassifyResponse:
        model = self._model("classification")
        items = await self._encode(model, body.texts, body.truncate)
        results = await model.batcher(items)
        return ClassifyResponse(
            model=model.tag,
            results=[ClassifyResult(**r, truncated=item.truncated) for r, item in zip(results, items, strict=True)],
        )

    @app.get("/info", response_model=InfoResponse, summary="Served models: task, labels, variant, parity, metrics")
    async def info(self) -> InfoResponse:
        return InfoResponse(
            version=__version__,
            models={
                task: ModelInfo(tag=m.tag, task=task, variant=m.card.variant, demo=m.card.demo,
                                providers=list(m.pipeline.backend.providers), card=m.card.public())
                for task, m in self.models.items()
            },
        )

