"""The serving layer: onnxruntime, tokenizers, numpy, pydantic, bentoml. No torch, no training code."""

from service.service import BertServe

__all__ = ["BertServe"]
