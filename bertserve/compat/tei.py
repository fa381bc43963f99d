"""Text Embeddings Inference (TEI 1.9.3) request and response bodies, and its error dialect.

The routes under `/tei` answer as TEI does, so that a TEI client pointed at `http://host:3000/tei`
works: field names, defaults (`truncate` is false, as in TEI) and answers are TEI's OpenAPI
document's (`docs/openapi.json` of huggingface/text-embeddings-inference). The Hugging Face
Inference API's feature-extraction and sentence-similarity shapes are the same bodies.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictBool

from bertserve.compat import ModelFromUrl
from bertserve.errors import BertserveError, InputTooLongError, TooManyInputsError, ValidationError
from bertserve.schemas import (
    LIMITS,
    NUMBER,
    TEXT_SCHEMA,
    Candidates,
    Document,
    Documented,
    Integer,
    NotSupported,
    Text,
)
from bertserve.schemas import Texts as TextList  # `Texts` here is TEI's /decode answer

PREFIX = "/tei"
# TEI's error types (its `ErrorType`, serialized in lower case as its examples show) and the status
# it answers each with; our error types map onto them (`tei_error`).
TEI_STATUS = {"unhealthy": 503, "backend": 424, "overloaded": 429, "validation": 413, "tokenizer": 422,
              "empty": 400}
Direction = Literal["Left", "Right", "left", "right"]


def _texts(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


def direction_of(direction: str | None, prompt_name: str | None = None) -> str:
    """The tokenizer's truncation direction ("left" keeps a text's end); a prompt name, which no
    model of ours defines, is a 422 that says so, never ignored."""
    if prompt_name is not None:
        raise ValidationError("prompt_name: this model defines no prompts (prepend the prompt text to the "
                              "inputs yourself, or leave prompt_name out)")
    return (direction or "right").lower()


class EmbedRequest(ModelFromUrl):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": "What is Deep Learning?"}]})
    inputs: Text | TextList = Field(description="a text or a list of texts (token-id inputs are not accepted)")
    normalize: StrictBool = True
    truncate: StrictBool | None = Field(False, description="cut texts longer than the model's window (TEI's "
                                        "default: false, a too-long text is a 413)")
    truncation_direction: Direction | None = None
    prompt_name: Annotated[str | None, NotSupported] = None
    dimensions: Annotated[int, Field(ge=0), NUMBER] | None = Field(
        None, description="must equal the model's dimensions when given")

    def texts(self) -> list[str]:
        return _texts(self.inputs)


class Vectors(RootModel[list[list[float]]]):
    """One vector per input (a single text is a list of one)."""


class SimilarityInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_sentence: Text
    sentences: TextList


class SimilarityParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    truncate: StrictBool | None = False
    truncation_direction: Direction | None = None
    prompt_name: Annotated[str | None, NotSupported] = None


class SimilarityRequest(ModelFromUrl):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": {
        "source_sentence": "What is Deep Learning?", "sentences": ["What is Machine Learning?"]}}]})
    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class Scores(RootModel[list[float]]):
    """One score per sentence, in order."""


PredictInput = str | list[str] | list[list[str]]


def _batch_of(size: int) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, LIMITS: {"maxItems": "max_texts_per_request"},
            "items": {"type": "array", "minItems": size, "maxItems": size, "items": TEXT_SCHEMA}}


# what /predict reads: a text, a pair, or a batch of texts ([[a], ...]) or of pairs ([[a, b], ...]),
# never the two kinds mixed (a model reads one or the other)
PREDICT_INPUT = Documented(schema={"anyOf": [
    TEXT_SCHEMA,
    {"type": "array", "minItems": 2, "maxItems": 2, "items": TEXT_SCHEMA},
    _batch_of(1), _batch_of(2)]})


class PredictRequest(ModelFromUrl):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": "What is Deep Learning?"}]})
    inputs: Annotated[PredictInput, PREDICT_INPUT] = Field(
        description="a text, a pair [a, b], or a batch of texts [[a], ...] or of pairs [[a, b], ...]")
    raw_scores: StrictBool = Field(False, description="the model's logits instead of probabilities")
    truncate: StrictBool | None = False
    truncation_direction: Direction | None = None

    def batch(self) -> tuple[list[str | tuple[str, str]], bool]:
        """(the inputs, a text or a pair each; whether the request was a batch)."""
        x = self.inputs
        if isinstance(x, str):
            return [x], False
        if all(isinstance(i, str) for i in x):
            if len(x) == 2:
                return [(str(x[0]), str(x[1]))], False
            raise ValidationError(f"inputs: a list of strings is one pair [a, b] (got {len(x)} strings); "
                                  "send a batch as [[\"text\"], [\"a\", \"b\"], ...]")
        out: list[str | tuple[str, str]] = []
        for i, item in enumerate(x):
            if isinstance(item, list) and len(item) == 1:
                out.append(item[0])
            elif isinstance(item, list) and len(item) == 2:
                out.append((item[0], item[1]))
            else:
                raise ValidationError(f"inputs.{i}: each batch item is [text] or [a, b]")
        return out, True


class Prediction(BaseModel):
    label: str
    score: float


class Predictions(RootModel[list[Prediction] | list[list[Prediction]]]):
    """Labels by score, highest first; a list per input for a batch."""


class RerankRequest(ModelFromUrl):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"query": "What is Deep Learning?", "texts": ["Deep Learning is ..."]}]})
    query: Text
    texts: Candidates
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = False
    truncation_direction: Direction | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": "test"}]})
    inputs: Document | Annotated[list[Document], Documented(minItems=1, limits={"maxItems": "max_texts_per_request"})]
    add_special_tokens: StrictBool = True
    prompt_name: Annotated[str | None, NotSupported] = None


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = None
    stop: int | None = None


class Tokens(RootModel[list[list[SimpleToken]]]):
    """The tokens of each input."""


# the ids of one text: at least one, each an id of the tokenizer's vocabulary (below its size)
TokenIds = Annotated[list[Annotated[Integer, Documented(minimum=0)]], Documented(minItems=1)]


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ids": [101, 3231, 102]}]})
    ids: TokenIds | Annotated[list[TokenIds], Documented(minItems=1, limits={"maxItems": "max_texts_per_request"})] = Field(
        description="the ids of one text, or of several")
    skip_special_tokens: StrictBool = True


class Texts(RootModel[list[str]]):
    """One text per list of ids."""


class Info(BaseModel):
    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: dict[str, Any]
    served_model_name: str
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None = None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None


def tei_error(status: int, error_type: str, exc: BertserveError | None = None) -> tuple[int, str]:
    """Our (status, error_type) as TEI answers it: TEI's six error types and their statuses (413 for
    too many or too long inputs, 424 for a failed inference, 429 overloaded, 503 unhealthy). Applied
    twice it changes nothing (a TEI answer maps to itself)."""
    if isinstance(exc, TooManyInputsError | InputTooLongError) or status == 413:
        return 413, "validation"
    if error_type in ("backend", "internal") or status == 424:
        return 424, "backend"
    if error_type in TEI_STATUS and TEI_STATUS[error_type] == status:
        return status, error_type
    if error_type == "empty":
        return 400, "empty"
    if error_type == "overloaded":
        return 429, "overloaded"
    if error_type in ("unavailable", "unhealthy"):
        return 503, "unhealthy"
    if error_type == "timeout":
        return 504, "backend"
    return status, "validation"  # a body TEI could not read (its 422), an unknown route, a bad key
