"""Request and response models, shared by the service, the tests and the load tests.

Types are checked here; limits (how many texts, how long) are checked by the service against
its settings, so that they stay configurable and their messages can say how to fix the request.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["a gripping, beautifully shot film", "a tedious mess"]},
        {"pairs": [["A man is playing a guitar.", "A man plays the guitar."]]}]})

    texts: list[str] | None = Field(None, description="Texts to classify (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST, "
                                    "each non-empty). Send `texts` or `pairs`, not both.")
    pairs: list[tuple[str, str]] | None = Field(
        None, description="Text pairs for a model trained on pairs, each `[a, b]` read as one input "
        "(`[CLS] a [SEP] b [SEP]`); 1 to BERTSERVE_MAX_TEXTS_PER_REQUEST pairs, each text non-empty. A pair "
        "longer than the window is cut longest side first.")
    truncate: bool = Field(True, description="Cut inputs longer than the model's window (the result says so); "
                           "false answers 422 for such an input instead.")
    model: str | None = Field(None, description="The served model to answer (a name from /info); "
                              "none: the task's default model.")


class ClassifyResult(BaseModel):
    label: str | None = Field(None, description="single-label: the most probable label")
    score: float | None = Field(None, description="single-label: its probability")
    labels: list[str] | None = Field(None, description="multi-label: every label over its threshold")
    scores: dict[str, float] | None = Field(None, description="probability per label")
    value: float | None = Field(None, description="regression: the predicted value")
    truncated: bool = Field(False, description="the text (or pair) was cut to the model's window")

class ClassifyResponse(BaseModel):
    model: str = Field(description="the store tag of the model that answered")
    results: list[ClassifyResult]


class RerankRequest(BaseModel):
    """TEI's RerankRequest, plus `top_n` and `model`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"query": "What is Deep Learning?", "texts": ["Deep Learning is a kind of machine learning.",
                                                      "Cheese is made from milk."]}]})

    query: str = Field(description="The query the texts are ranked for (non-empty; at most "
                       "BERTSERVE_MAX_CHARS_PER_TEXT characters).")
    texts: list[str] = Field(description="Candidate texts (1 to BERTSERVE_MAX_RERANK_TEXTS, each non-empty, at "
                             "most BERTSERVE_MAX_CHARS_PER_TEXT characters). Each is read with the query as one "
                             "pair input.")
    top_n: int | None = Field(None, description="Answer only the best `top_n` texts; null: all of them.")
    return_text: bool = Field(False, description="Include each text in its result.")
    raw_scores: bool = Field(False, description="The relevance log-odds (the logit) instead of its probability.")
    truncate: bool = Field(True, description="Cut a (query, text) pair longer than the model's window, longest "
                           "side first (the result says so); false answers 422 for such a pair instead.")
    model: str | None = Field(None, description="The served rerank model to answer (a name from /info); "
                              "none: the task's default model.")


class Rank(BaseModel):
    index: int = Field(description="the text's position in `texts`")
    score: float = Field(description="relevance: a probability (0-1), or the logit with raw_scores")
    text: str | None = Field(None, description="the text, with return_text")
    truncated: bool = Field(False, description="the (query, text) pair was cut to the model's window")


class RerankResponse(RootModel[list[Rank]]):
    """The texts sorted by score, best first (TEI's shape: a JSON array of ranks)."""


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["A man is playing a guitar."]}]})

    texts: list[str] = Field(description="Texts to embed (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST, each non-empty).")
    normalize: bool = Field(True, description="L2-normalize the vectors (false: the raw pooled vectors, as the model pools them).")
    truncate: bool = Field(True, description="Cut texts longer than the model's window; false answers 422.")
    model: str | None = Field(None, description="The served model to answer (a name from /info); "
                              "none: the task's default model.")


class EmbedResponse(BaseModel):
    model: str
    dimensions: int
    embeddings: list[list[float]] = Field(description="one vector per text, in order")
    truncated: list[bool] = Field(description="per text: it was cut to the model's window")


class SimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"source_sentence": "A man is playing a guitar.", "sentences": ["Someone plays music.", "A cat sleeps."]}]})

    source_sentence: str = Field(description="The sentence the others are compared with.")
    sentences: list[str] = Field(description="Sentences to score against it (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST).")
    truncate: bool = True
    model: str | None = Field(None, description="The served model to answer (a name from /info); "
                              "none: the task's default model.")


class SimilarityResponse(BaseModel):
    model: str
    scores: list[float] = Field(description="cosine similarity of each sentence to the source sentence")


class NerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["Angela Merkel met Emmanuel Macron in Paris on Monday."]}]})

    texts: list[str] = Field(description="Texts to tag (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST, each non-empty and "
                             "at most BERTSERVE_MAX_CHARS_PER_DOCUMENT characters). Texts longer than the "
                             "model's window are read in overlapping windows, never cut.")
    model: str | None = Field(None, description="The served model to answer (a name from /info); "
                              "none: the task's default model.")


class NerEntity(BaseModel):
    entity_group: str = Field(description="the entity type, e.g. PER")
    word: str = Field(description="exactly text[start:end]")
    start: int = Field(description="character offset of the first character (Python string index)")
    end: int = Field(description="character offset one past the last character")
    score: float = Field(description="mean probability of the entity's words")


class NerResult(BaseModel):
    entities: list[NerEntity] = Field(description="entities in text order; spans never overlap")


class NerResponse(BaseModel):
    model: str
    results: list[NerResult] = Field(description="one per text, in order")


class QaItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The question (non-empty; at most BERTSERVE_MAX_CHARS_PER_TEXT characters).")
    context: str = Field(description="The text that holds the answer (non-empty; at most "
                         "BERTSERVE_MAX_CHARS_PER_DOCUMENT characters). Long contexts are read in overlapping "
                         "windows, never cut.")


class QaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": [
        {"question": "Where did they meet?", "context": "Angela Merkel met Emmanuel Macron in Paris on Monday."}]}]})

    items: list[QaItem] = Field(description="Questions with their contexts (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST).")
    model: str | None = Field(None, description="The served model to answer (a name from /info); "
                              "none: the task's default model.")


class QaResult(BaseModel):
    answer: str = Field(description="exactly context[start:end]; empty when there is no answer")
    start: int = Field(description="character offset of the answer in the context")
    end: int = Field(description="character offset one past the answer's end")
    score: float = Field(description="probability of the answer span (start x end)")
    no_answer: bool | None = Field(None, description="models trained with unanswerable questions: the null "
                                   "answer won")


class QaResponse(BaseModel):
    model: str
    results: list[QaResult] = Field(description="one per item, in order")


class OpenAIEmbeddingRequest(BaseModel):
    """The OpenAI embeddings request (`POST /v1/embeddings`), so OpenAI clients work unchanged."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="a text or a list of texts (token arrays are not accepted)")
    model: str | None = Field(None, description="the served embedding model to answer (a name from /info, or "
                              "its store tag); none: the default similarity model")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must equal the model's dimensions when given")
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


def validated(model: type[BaseModel], body: Any) -> tuple[Any, str | None]:
    """(the answer as `model`, None), or (None, why it does not match): load tests and image checks."""
    from pydantic import ValidationError

    try:
        return model.model_validate(body), None
    except ValidationError as e:
        first = e.errors()[0]
        return None, f"body does not match {model.__name__}: {first['loc']}: {first['msg']}"


class ErrorBody(BaseModel):
    error: str
    error_type: str


class ModelInfo(BaseModel):
    name: str = Field(description="the name requests choose it by (the `model` field)")
    tag: str
    task: str
    default: bool = Field(description="answers its task's requests that name no model")
    routes: list[str] = Field(description="the routes that serve it")
    variant: str | None
    demo: bool
    providers: list[str]
    entity_types: list[str] | None = Field(None, description="ner: the entity types the model finds")
    card: dict[str, Any]
    model_config = ConfigDict(extra="allow")  # a task may add fields of its own (TaskSpec.info)


class InfoResponse(BaseModel):
    service: str = "bertserve"
    version: str
    models: dict[str, ModelInfo] = Field(description="served models by name")
    defaults: dict[str, str] = Field(default_factory=dict, description="task -> the name of its default model")
