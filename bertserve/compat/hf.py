"""The Hugging Face Inference API task shapes (huggingface.js `packages/tasks/src/tasks/<task>/spec`),
as `huggingface_hub.InferenceClient` sends and reads them, for the routes under `/hf/<task>`.

`InferenceClient(model="http://host:3000/hf/<task>/<model>")` posts to that URL exactly, so each
task's route takes the served model's name as its last path segment (without it: the task's
default model). Parameters are accepted in the client's snake_case and the spec's camelCase; a
parameter we cannot honour is a 422 that says so, never ignored. Feature extraction and sentence
similarity share TEI's bodies (`compat.tei`), which is what the client sends for them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictBool
from pydantic.alias_generators import to_camel

from bertserve.compat import ModelFromUrl
from bertserve.errors import ValidationError
from bertserve.schemas import NUMBER, Candidates, Document, Documented, Text

PREFIX = "/hf"


class _Parameters(BaseModel):
    # both spellings, and nothing else: an unknown parameter is a 422, not silently dropped
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


def refuse(parameter: str, value: object, why: str) -> None:
    raise ValidationError(f"parameters.{parameter}={value!r} cannot be honoured: {why}")


class TextClassificationParameters(_Parameters):
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = None
    top_k: Annotated[int, Field(ge=1), NUMBER] | None = None


class TextClassificationRequest(ModelFromUrl):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": "I like you. I love you"}]})
    inputs: Text
    parameters: TextClassificationParameters | None = None


class LabelScore(BaseModel):
    label: str
    score: float


class TextClassificationResponse(RootModel[list[list[LabelScore]]]):
    """Labels by score, highest first, for the one input (nested: the client reads element 0)."""


class TokenClassificationParameters(_Parameters):
    # the spec's strategies are read, and all but ours refused by name: the document lists ours
    aggregation_strategy: Annotated[Literal["none", "simple", "first", "average", "max"] | None,
                                    Documented(schema={"enum": ["first", None]})] = None
    ignore_labels: list[str] | None = None
    stride: Annotated[int, Field(ge=0), NUMBER] | None = None


class TokenClassificationRequest(ModelFromUrl):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"inputs": "My name is Sarah Jessica Parker but you can call me Jessica"}]})
    inputs: Document
    parameters: TokenClassificationParameters | None = None


class Entity(BaseModel):
    entity_group: str
    score: float
    word: str
    start: int
    end: int


class TokenClassificationResponse(RootModel[list[Entity]]):
    """The entities of the input, in text order."""


class QuestionAnsweringInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: Text
    context: Document


class QuestionAnsweringParameters(_Parameters):
    top_k: Annotated[int, Field(ge=1), NUMBER] | None = None
    doc_stride: Annotated[int, Field(ge=0), NUMBER] | None = None
    max_answer_len: Annotated[int, Field(ge=1), NUMBER] | None = None
    max_seq_len: Annotated[int, Field(ge=1), NUMBER] | None = None
    max_question_len: Annotated[int, Field(ge=1), NUMBER] | None = None
    handle_impossible_answer: StrictBool | None = None
    # answers are token spans: only false (or leaving it out) can be honoured
    align_to_words: Annotated[StrictBool | None, Documented(schema={"enum": [False, None]})] = None


class QuestionAnsweringRequest(ModelFromUrl):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": {
        "question": "What is my name?", "context": "My name is Clara and I live in Berkeley."}}]})
    inputs: QuestionAnsweringInput
    parameters: QuestionAnsweringParameters | None = None


class Answer(BaseModel):
    answer: str
    score: float
    start: int
    end: int


class QuestionAnsweringResponse(RootModel[Answer | list[Answer]]):
    """The best answer; a list of the `top_k` best when top_k > 1."""


class TextRankingInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Text
    texts: Candidates


class TextRankingRequest(ModelFromUrl):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": {
        "query": "What is Deep Learning?", "texts": ["Deep Learning is a kind of machine learning.",
                                                     "Cheese is made from milk."]}}]})
    inputs: TextRankingInput
