"""Request and response models, shared by the service, the tests and the load tests.

Types are checked here; limits (how many texts, how long) are checked by the service against
its settings, so that they stay configurable and their messages can say how to fix the request.
The OpenAPI document states those limits too (`Documented`): a client, or schemathesis, reads
there what the service accepts. Flags and counts are strict (`true`, not `"true"` or `1`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    JsonValue,
    RootModel,
    StrictBool,
    field_validator,
)
from pydantic_core import CoreSchema, PydanticCustomError

# In the generated JSON schema: {keyword: setting} for limits whose values are service settings
# (e.g. {"maxItems": "max_texts_per_request"}); the service writes the values in (service/docs.py).
LIMITS = "x-bertserve-limits"


class Documented:
    """JSON-schema keywords for the API document only: what the service itself checks (with its own
    messages and statuses, and limits that are settings), stated where clients read the API.
    `limits` maps a keyword to the ServiceSettings field that holds its value; `schema` replaces
    the generated schema whole (a parameter that is accepted only to be refused by name)."""

    def __init__(self, *, limits: dict[str, str] | None = None, schema: dict[str, Any] | None = None,
                 not_null: bool = False, **keywords: Any) -> None:
        self.limits, self.schema, self.not_null, self.keywords = limits or {}, schema, not_null, keywords

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        schema: dict[str, Any] = dict(self.schema) if self.schema is not None else dict(handler(core_schema))
        if self.not_null and "anyOf" in schema:  # an optional field: send it, or leave it out
            branches = [b for b in schema.pop("anyOf") if b != {"type": "null"}]
            schema.update(branches[0] if len(branches) == 1 else {"anyOf": branches})
        schema.update(self.keywords)
        if self.limits:
            schema[LIMITS] = dict(self.limits)
        return schema


# Not only whitespace: one character that Python's `str.strip()` keeps (the service's test). Written
# out rather than `\S`, whose whitespace differs between regex engines (U+0085, U+001C-U+001F).
NOT_ONLY_SPACE = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# A text: not empty or only whitespace (400), at most BERTSERVE_MAX_CHARS_PER_TEXT characters (422)
TEXT_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": NOT_ONLY_SPACE,
                               LIMITS: {"maxLength": "max_chars_per_text"}}
Text = Annotated[str, Documented(minLength=1, pattern=NOT_ONLY_SPACE, limits={"maxLength": "max_chars_per_text"})]
# A /ner text, a /qa context or a text to tokenize: read whole, in windows
Document = Annotated[str, Documented(minLength=1, pattern=NOT_ONLY_SPACE,
                                     limits={"maxLength": "max_chars_per_document"})]
# 1 to BERTSERVE_MAX_TEXTS_PER_REQUEST of them (400 for none, 422 for more)
Texts = Annotated[list[Text], Documented(minItems=1, limits={"maxItems": "max_texts_per_request"})]
Documents = Annotated[list[Document], Documented(minItems=1, limits={"maxItems": "max_texts_per_request"})]
# 1 to BERTSERVE_MAX_RERANK_TEXTS candidates of a rerank query
Candidates = Annotated[list[Text], Documented(minItems=1, limits={"maxItems": "max_rerank_texts"})]
Pairs = Annotated[list[tuple[Text, Text]], Documented(minItems=1, limits={"maxItems": "max_texts_per_request"})]
def _a_number(value: Any) -> Any:
    if isinstance(value, str | bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# JSON Schema's integer: 3, or 3.0 (a number with no fraction), never "3" or true. Bounds go before
# it, `Annotated[int, Field(ge=1), NUMBER]`, or pydantic leaves them out of the JSON schema.
NUMBER = BeforeValidator(_a_number)
Integer = Annotated[int, NUMBER]
# accepted only to be refused by name when set (a value we cannot honour is never ignored)
NotSupported = Documented(schema={"type": "null"})


def _left_out(schema: dict[str, Any]) -> None:
    """A field sent or left out, never null: no `null` default in the document."""
    schema.pop("default", None)


LONG_TEXT_DOC = ("What to do with a text longer than the model's window: `truncate` cuts it (the result says so), "
                 "`error` answers 422, `chunk` reads it whole in overlapping windows and aggregates them (the "
                 "result says how many windows were read). Left out: `truncate`, or what `truncate` says when it is "
                 "sent; the server may set another default (BERTSERVE_LONG_TEXT, or the model's own from export). "
                 "Send `long_text` or `truncate`, not both.")
AGGREGATE_DOC = ("With long_text=chunk (send both): `mean` (default) weighs each window's output by its tokens; "
                 "`max` keeps the window the model is surest of (a verdict stated in one paragraph decides).")
LongTextPolicy = Annotated[Literal["truncate", "error", "chunk"] | None, Documented(not_null=True)]


def long_text_field() -> Any:
    return Field(None, json_schema_extra=_left_out, description=LONG_TEXT_DOC)


def aggregate_field(doc: str = AGGREGATE_DOC) -> Any:
    return Field(None, json_schema_extra=_left_out, description=doc)


# `long_text` or `truncate`, never both; `aggregate` only with long_text=chunk
LONG_TEXT_RULES: list[JsonValue] = [
    {"not": {"required": ["truncate", "long_text"]}},
    {"if": {"required": ["aggregate"]}, "then": {"required": ["long_text"],
                                                  "properties": {"long_text": {"const": "chunk"}}}},
]


def _sent(value: Any, error_type: str, message: str) -> Any:
    """A field that is sent or left out: an explicit null is refused as `error_type`."""
    if value is None:
        raise PydanticCustomError(error_type, message)
    return value


class Chunked(BaseModel):
    """The long-text fields of a request (`/classify`, `/embed`, `/similarity`): sent, or left out
    (an explicit null is not a policy)."""

    @field_validator("long_text", "aggregate", mode="before", check_fields=False)
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        return _sent(value, "literal_error", "Input should be a string: send a value or leave it out")


class WindowSpan(BaseModel):
    index: int = Field(description="the window's position among the text's windows")
    start: int = Field(description="its first character in the text")
    end: int = Field(description="one past its last character")


class ClassifyRequest(Chunked):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["a gripping, beautifully shot film", "a tedious mess"]},
        {"pairs": [["A man is playing a guitar.", "A man plays the guitar."]]}],
        "oneOf": [{"required": ["texts"]}, {"required": ["pairs"]}],
        # pairs are cut longest side first, never chunked
        "allOf": [*LONG_TEXT_RULES, {"not": {"required": ["pairs", "long_text"],
                                             "properties": {"long_text": {"const": "chunk"}}}}]})

    texts: Annotated[Texts | None, Documented(not_null=True)] = Field(
        None, json_schema_extra=_left_out, description="Texts to classify (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST, "
        "each non-empty). Send `texts` or `pairs`, not both.")
    pairs: Annotated[Pairs | None, Documented(not_null=True)] = Field(
        None, json_schema_extra=_left_out, description="Text pairs for a model trained on pairs, each `[a, b]` "
        "read as one input (`[CLS] a [SEP] b [SEP]`); 1 to BERTSERVE_MAX_TEXTS_PER_REQUEST pairs, each text "
        "non-empty. A pair longer than the window is cut longest side first.")
    truncate: StrictBool = Field(True, description="Cut inputs longer than the model's window (the result says "
                                 "so); false answers 422 for such an input instead.")
    model: str | None = Field(None, description="The served model to answer (a name from /info); "
                              "none: the task's default model.")
    long_text: LongTextPolicy = long_text_field()
    aggregate: Annotated[Literal["mean", "max"] | None, Documented(not_null=True)] = aggregate_field()

    @field_validator("texts", "pairs", mode="before")
    @classmethod
    def _sent_or_left_out(cls, value: Any) -> Any:
        """`texts` or `pairs`, the other left out (an explicit null is not a list)."""
        return _sent(value, "list_type", "Input should be a valid list")


class ClassifyResult(BaseModel):
    label: str | None = Field(None, description="single-label: the most probable label")
    score: float | None = Field(None, description="single-label: its probability")
    labels: list[str] | None = Field(None, description="multi-label: every label over its threshold")
    scores: dict[str, float] | None = Field(None, description="probability per label")
    value: float | None = Field(None, description="regression: the predicted value")
    truncated: bool = Field(False, description="the text (or pair) was cut to the model's window")
    windows: int | None = Field(None, description="long_text=chunk: the windows read")
    window: WindowSpan | None = Field(None, description="long_text=chunk: the window the model is surest of (with "
                                      "aggregate=max, the one that decided)")


class ClassifyResponse(BaseModel):
    model: str = Field(description="the store tag of the model that answered")
    results: list[ClassifyResult]


class RerankRequest(BaseModel):
    """TEI's RerankRequest, plus `top_n` and `model`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"query": "What is Deep Learning?", "texts": ["Deep Learning is a kind of machine learning.",
                                                      "Cheese is made from milk."]}]})

    query: Text = Field(description="The query the texts are ranked for (non-empty; at most "
                        "BERTSERVE_MAX_CHARS_PER_TEXT characters).")
    texts: Candidates = Field(description="Candidate texts (1 to BERTSERVE_MAX_RERANK_TEXTS, each non-empty, at "
                             "most BERTSERVE_MAX_CHARS_PER_TEXT characters). Each is read with the query as one "
                             "pair input.")
    top_n: Annotated[Integer, Documented(minimum=1)] | None = Field(
        None, description="Answer only the best `top_n` texts (at least 1); null: all of them.")
    return_text: StrictBool = Field(False, description="Include each text in its result.")
    raw_scores: StrictBool = Field(False, description="The relevance log-odds (the logit) instead of its probability.")
    truncate: StrictBool = Field(True, description="Cut a (query, text) pair longer than the model's window, longest "
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


class EmbedRequest(Chunked):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["A man is playing a guitar."]}],
                                                                  "allOf": LONG_TEXT_RULES})

    texts: Texts = Field(description="Texts to embed (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST, each non-empty).")
    normalize: StrictBool = Field(True, description="L2-normalize the vectors (false: the raw pooled vectors, as the model pools them).")
    truncate: StrictBool = Field(True, description="Cut texts longer than the model's window; false answers 422.")
    model: str | None = Field(None, description="The served model to answer (a name from /info); "
                              "none: the task's default model.")
    long_text: LongTextPolicy = long_text_field()
    aggregate: Annotated[Literal["mean"] | None, Documented(not_null=True)] = aggregate_field(
        "With long_text=chunk (send both): `mean`, the token-weighted mean of the windows' vectors, renormalized "
        "(the only aggregate of one vector per text; /similarity also takes `max`).")


class EmbedResponse(BaseModel):
    model: str
    dimensions: int
    embeddings: list[list[float]] = Field(description="one vector per text, in order")
    truncated: list[bool] = Field(description="per text: it was cut to the model's window")
    windows: list[int] | None = Field(None, description="long_text=chunk: per text, the windows read")


class SimilarityRequest(Chunked):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"source_sentence": "A man is playing a guitar.", "sentences": ["Someone plays music.", "A cat sleeps."]}],
        "allOf": LONG_TEXT_RULES})

    source_sentence: Text = Field(description="The sentence the others are compared with.")
    sentences: Texts = Field(description="Sentences to score against it (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST).")
    truncate: StrictBool = True
    model: str | None = Field(None, description="The served model to answer (a name from /info); "
                              "none: the task's default model.")
    long_text: LongTextPolicy = long_text_field()
    aggregate: Annotated[Literal["mean", "max"] | None, Documented(not_null=True)] = aggregate_field(
        "With long_text=chunk (send both): `mean` (default) compares the token-weighted mean of a text's windows; "
        "`max` scores each text by its best window (a long document matches when any part of it does).")


class SimilarityResponse(BaseModel):
    model: str
    scores: list[float] = Field(description="cosine similarity of each sentence to the source sentence (with "
                                "long_text=chunk and aggregate=max: of its best window)")
    windows: list[int] | None = Field(None, description="long_text=chunk: per sentence, the windows read")


class NerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["Angela Merkel met Emmanuel Macron in Paris on Monday."]}]})

    texts: Documents = Field(description="Texts to tag (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST, each non-empty and "
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

    question: Text = Field(description="The question (non-empty; at most BERTSERVE_MAX_CHARS_PER_TEXT characters).")
    context: Document = Field(description="The text that holds the answer (non-empty; at most "
                         "BERTSERVE_MAX_CHARS_PER_DOCUMENT characters). Long contexts are read in overlapping "
                         "windows, never cut.")


class QaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": [
        {"question": "Where did they meet?", "context": "Angela Merkel met Emmanuel Macron in Paris on Monday."}]}]})

    items: Annotated[list[QaItem], Documented(minItems=1, limits={"maxItems": "max_texts_per_request"})] = Field(
        description="Questions with their contexts (1 to BERTSERVE_MAX_TEXTS_PER_REQUEST).")
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

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"input": ["A man is playing a guitar."], "encoding_format": "float"}]})

    input: Text | Texts = Field(description="a text or a list of texts (token arrays are not accepted)")
    model: str | None = Field(None, description="the served embedding model to answer (a name from /info, or "
                              "its store tag); none: the default similarity model")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Integer | None = Field(None, description="must equal the model's dimensions when given")
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
    variant: str | None = Field(description="the variant this worker serves (fp32, int8, int8-vnni, fp16)")
    variants: dict[str, Any] | None = Field(
        None, description="how it was chosen among the model's published variants: `served`, `chosen_by`, the "
        "median ms of each measured here (`measured_ms`), those that cannot run here and why (`not_run`), the "
        "seconds the choice took; null for a model published with one variant")
    demo: bool
    providers: list[str]
    entity_types: list[str] | None = Field(None, description="ner: the entity types the model finds")
    report: str | None = Field(None, description="the model's report page (training, quality, parity, latency); "
                                                 "null for a model exported before reports existed")
    shadow: dict[str, Any] | None = Field(
        None, description="shadow parity (BERTSERVE_SHADOW_RATE > 0): rate, samples re-run on the fp32 reference, "
        "agreement with it so far, samples dropped (queue full), mean difference; this worker's counts")
    card: dict[str, Any]
    model_config = ConfigDict(extra="allow")  # a task may add fields of its own (TaskSpec.info)


class InfoResponse(BaseModel):
    service: str = "bertserve"
    version: str
    models: dict[str, ModelInfo] = Field(description="served models by name")
    defaults: dict[str, str] = Field(default_factory=dict, description="task -> the name of its default model")
    admin_reload: bool = Field(False, description="POST /admin/reload is on (BERTSERVE_ADMIN_RELOAD): `bertserve "
                               "fit --serve` and `bertserve reload` can make this service load new versions")
    training: list[str] = Field(default_factory=list, description="tasks whose demo model `bertserve quickstart` "
                                "is still training; each is served as it lands when the service watches the store")


class ReloadRequest(BaseModel):
    """POST /admin/reload: which served models to reload (none named: all of them)."""

    models: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=64, description="served names (as /info lists them) to serve the newest published "
        "version of; null or left out: every served model, and any task that has a model now and had none")
    model_config = ConfigDict(extra="forbid")


class ModelSwap(BaseModel):
    before: str | None = Field(description="the tag served before the reload; null: the name was not served")
    after: str = Field(description="the tag served now")


class ReloadResponse(BaseModel):
    generation: int = Field(description="the reload's number: it grows by one with each reload asked for")
    models: dict[str, ModelSwap] = Field(description="every served name: its tag before and after")
    changed: list[str] = Field(description="the names now served by another tag (or newly served)")
    workers: int = Field(description="worker processes that have reloaded (every one, when this answers 200)")
