"""Request and response models, shared by the service, the tests and the load tests.

Types are checked here; limits (how many texts, how long) are checked by the service against
its settings, so that they stay configurable and their messages can say how to fix the request.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["a gripping, beautifully shot film", "a tedious mess"]}]})

    texts: list[str] = Field(description="Texts to classify (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST, each non-empty).")
    truncate: bool = Field(True, description="Cut texts longer than the model's window (the result says so); "
                           "false answers 422 for such a text instead.")


class ClassifyResult(BaseModel):
    label: str | None = Field(None, description="single-label: the most probable label")
    score: float | None = Field(None, description="single-label: its probability")
    labels: list[str] | None = Field(None, description="multi-label: every label over its threshold")
    scores: dict[str, float] | None = Field(None, description="probability per label")
    value: float | None = Field(None, description="regression: the predicted value")
    truncated: bool = Field(False, description="the text was cut to the model's window")


class ClassifyResponse(BaseModel):
    model: str = Field(description="the store tag of the model that answered")
    results: list[ClassifyResult]


class ErrorBody(BaseModel):
    error: str
    error_type: str


class ModelInfo(BaseModel):
    tag: str
    task: str
    variant: str | None
    demo: bool
    providers: list[str]
    card: dict[str, Any]


class InfoResponse(BaseModel):
    service: str = "bertserve"
    version: str
    models: dict[str, ModelInfo]
