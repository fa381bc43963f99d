"""The serving layer: onnxruntime, tokenizers, numpy, pydantic, bentoml. No torch, no training code."""

from typing import Any, cast

import bentoml
from starlette.middleware.cors import CORSMiddleware

from service.http import Guard, JsonErrors
from service.lifecycle import LIFECYCLE
from service.service import FAST_PATHS, SETTINGS, BertServe

# Around BentoML's own app, outermost first (after BentoML's metrics, tracing and timeout layers):
# - the error rewriting: BentoML's plain-text 404s and 405s, and under /tei/ every refusal, leave
#   in the one error shape;
# - CORS, when origins are configured: preflights answered, and its headers on every answer;
# - the HTTP guard: limits, the API key, Server-Timing, drain, and the task routes' fast path. Here,
#   a valid task-route body is answered before BentoML's context layer, its router and the mounted
#   FastAPI app's own middleware stack (20-177 us less of a worker's event-loop CPU a request in
#   twelve interleaved pairs; docs/performance-history.md).
_service = cast("bentoml.Service[Any]", BertServe)
_service.add_asgi_middleware(JsonErrors)
if SETTINGS.cors_origins:  # off unless origins are configured
    _service.add_asgi_middleware(CORSMiddleware, allow_origins=SETTINGS.cors_origins,
                                 allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"])
_service.add_asgi_middleware(Guard, settings=SETTINGS, lifecycle=LIFECYCLE, fast_paths=FAST_PATHS)

__all__ = ["BertServe"]
