"""Text Embeddings Inference's routes that belong to no task: `/tei/info`, `/tei/health`,
`/tei/tokenize` and `/tei/decode` (TEI 1.9.3's shapes, `bertserve.compat.tei`). The task routes
under `/tei` (`/embed`, `/similarity`, `/predict`) are declared by their task modules.

TEI serves one model; these routes describe and tokenize with one of ours: BERTSERVE_TEI_MODEL,
else the default similarity model, else the first model served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from fastapi import FastAPI, Response

from bertserve import __version__
from bertserve.compat import tei
from bertserve.errors import EmptyInputError, NotReadyError, UnknownModelError, ValidationError
from service.http import TEI_ERROR_RESPONSES, check_count, check_texts
from service.models import LoadedModel, ServedModels

# what each task's model is in TEI's words (`Info.model_type`)
TEI_KIND = {"similarity": "embedding", "classification": "classifier"}
# sentence-transformers' pooling names where TEI's differ
TEI_POOLING = {"lasttoken": "last_token"}


def tei_model(served: ServedModels | None, settings: Any) -> LoadedModel:
    if served is None or not served.by_name:
        raise NotReadyError("the service is starting, or serves no model; retry shortly")
    name = settings.tei_model or served.defaults.get("similarity") or next(iter(served.by_name))
    model = served.by_name.get(name)
    if model is None:
        raise UnknownModelError(f"BERTSERVE_TEI_MODEL={name!r} is not served; served: {', '.join(served.by_name)}")
    return model


def _model_type(model: LoadedModel) -> dict[str, Any]:
    kind = TEI_KIND.get(model.task)
    labels = list(model.card.labels)
    if kind == "embedding":
        # what training recorded of the base model's own pooling (older cards: mean, then the only one)
        pooling = str(model.card.training.get("pooling") or "mean")
        return {"embedding": {"pooling": TEI_POOLING.get(pooling, pooling)}}
    # TEI knows embeddings, classifiers and rerankers; our other tasks are described as classifiers
    # of their labels (NER's tags), which is what their heads are
    return {"classifier": {"id2label": {str(i): label for i, label in enumerate(labels)},
                           "label2id": {label: i for i, label in enumerate(labels)}}}


def install_tei_routes(app: FastAPI, served: Callable[[], ServedModels | None], settings: Any,
                       lifecycle: Any) -> None:
    def json(model: Any) -> Response:
        return Response(model.model_dump_json(), media_type="application/json")

    @app.get(tei.PREFIX + "/info", response_model=tei.Info, tags=["tei"], summary="TEI's /info",
             responses={status: TEI_ERROR_RESPONSES[status] for status in (404, 424, 503)})
    async def tei_info() -> Response:
        model = tei_model(served(), settings)
        return json(tei.Info(
            model_id=model.tag, model_sha=None, model_dtype=model.variant or "float32",
            model_type=_model_type(model), served_model_name=model.name,
            max_concurrent_requests=settings.max_concurrent_requests, max_input_length=model.card.max_length,
            max_batch_tokens=settings.max_batch_tokens, max_batch_requests=settings.max_batch_size,
            max_client_batch_size=settings.max_texts_per_request, auto_truncate=False,
            tokenization_workers=1, version=__version__))

    # TEI's answer: 200 with an empty body (no content type), or its 503
    @app.get(tei.PREFIX + "/health", tags=["tei"], summary="TEI's /health: 200 when ready, 503 otherwise",
             response_class=Response, responses={200: {"description": "ready (an empty body)", "content": None},
                                                 503: TEI_ERROR_RESPONSES[503], 424: TEI_ERROR_RESPONSES[424]})
    async def tei_health() -> Response:
        if not lifecycle.ready:
            raise NotReadyError("unhealthy: loading or shutting down")
        return Response(status_code=200)

    @app.post(tei.PREFIX + "/tokenize", response_model=tei.Tokens, responses=TEI_ERROR_RESPONSES, tags=["tei"],
              summary="TEI's /tokenize: the served model's tokens with their character spans")
    async def tei_tokenize(body: tei.TokenizeRequest) -> Response:
        tei.direction_of(None, body.prompt_name)  # a prompt name is refused
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        check_texts(texts, settings.max_texts_per_request, settings.max_chars_per_document, "inputs", "input",
                    "BERTSERVE_MAX_CHARS_PER_DOCUMENT")
        tokenizer = tei_model(served(), settings).pipeline.encoder.whole
        encodings = await anyio.to_thread.run_sync(
            lambda: tokenizer.encode_batch(texts, add_special_tokens=body.add_special_tokens))
        answer = []
        for enc in encodings:
            special = enc.special_tokens_mask
            answer.append([tei.SimpleToken(id=i, text=t, special=bool(sp), start=None if sp else a,
                                           stop=None if sp else b)
                           for i, t, sp, (a, b) in zip(enc.ids, enc.tokens, special, enc.offsets, strict=True)])
        return json(tei.Tokens(answer))

    @app.post(tei.PREFIX + "/decode", response_model=tei.Texts, responses=TEI_ERROR_RESPONSES, tags=["tei"],
              summary="TEI's /decode: token ids back to text")
    async def tei_decode(body: tei.DecodeRequest) -> Response:
        rows: list[Any] = list(body.ids) if body.ids and isinstance(body.ids[0], list) else [body.ids]
        ids = [[int(i) for i in row] for row in rows]
        check_count(ids, settings.max_texts_per_request, "ids", "list of ids")
        if not all(ids):
            raise EmptyInputError("ids is empty: send the ids of at least one token")
        tokenizer = tei_model(served(), settings).pipeline.encoder.whole
        size = tokenizer.get_vocab_size()
        if any(not 0 <= i < size for row in ids for i in row):
            raise ValidationError(f"ids: every id must be below the vocabulary size, {size}")
        return json(tei.Texts(tokenizer.decode_batch(ids, skip_special_tokens=body.skip_special_tokens)))
