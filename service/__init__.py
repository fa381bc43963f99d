"""The serving layer: onnxruntime, tokenizers, numpy, pydantic, bentoml. No torch, no training code."""

from typing import Any, cast

import bentoml

from service.http import JsonErrors
from service.service import BertServe

# Around BentoML's own app: its plain-text 404s and 405s leave in the one error shape.
cast("bentoml.Service[Any]", BertServe).add_asgi_middleware(JsonErrors)

__all__ = ["BertServe"]
