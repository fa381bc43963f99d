"""Routes built from the task registry: one generic endpoint per registered route.

Each task declares its routes (`bertserve.registry.Route`: path, request and response schemas, a
handler). This module turns each into a FastAPI POST route whose OpenAPI entry comes from those
schemas, and hands the handler a `TaskContext`: the models of its task, the input limits and the
shared inference path (featurize, the model's batcher, the task's assembly). Nothing here knows
any task by name.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from fastapi import FastAPI, Response
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from bertserve.errors import NotReadyError, TimeoutError_, ValidationError
from bertserve.registry import Route, TaskSpec, tasks
from bertserve.runtime import CHUNK, ERROR, MEAN, TRUNCATE, Chunks, Encoded, LongText
from bertserve.store import demo_training
from service import observability
from service.http import check_count, check_text, check_texts, error_responses
from service.models import LoadedModel, ServedModels

# Requests up to this many characters are tokenized on the event loop (tens of microseconds);
# a thread hand-off costs more than that under load. Larger ones go to a worker thread.
INLINE_TOKENIZE_CHARS = 2_000


def _characters(inputs: Any) -> int:
    """Characters to tokenize: texts, pairs, or the string fields of items (QA's question and
    context, a rerank query and its texts)."""
    if isinstance(inputs, str):
        return len(inputs)
    if isinstance(inputs, dict):
        return _characters(list(inputs.values()))
    if isinstance(inputs, list | tuple):
        return sum(_characters(x) for x in inputs)
    return 0


class TaskContext:
    """What a task's route handler may use: its task's models, the limits, the inference path."""

    def __init__(self, spec: TaskSpec, served: Callable[[], ServedModels | None], settings: Any):
        self.spec = spec
        self._served = served
        self.settings = settings

    def model(self, requested: str | None = None) -> LoadedModel:
        """The model a request names, or the task's default (404 for a name not served, 503 when
        the task has no model)."""
        served = self._served()
        if served is None:
            raise NotReadyError("the service is starting; retry shortly")
        model = served.choose(self.spec.name, requested)
        if model is None:
            task = self.spec.name
            training = demo_training()
            if training is not None and task in training["pending"]:
                watching = self.settings.watch_store_s > 0
                doing = "exporting" if (self.spec.demo or {}).get("epochs") == 0 else "training"
                raise NotReadyError(
                    f"the demo {task} model is still {doing} (`bertserve quickstart`, progress in "
                    f"{training['log'] or 'its output'}); "
                    + ("this route answers as soon as it is published: retry in a minute or two" if watching else
                       "once it is published, reload the service (POST /admin/reload or SIGHUP) or restart it"))
            raise NotReadyError(
                f"no {task} model is served: publish one with `bertserve train {task}` and "
                f"`bertserve export`, then name it in BERTSERVE_MODELS or BERTSERVE_MODEL_{task.upper()}"
            )
        observability.note_model(model.name)
        return model

    def check(self, texts: Sequence[str], field: str = "texts", item: str = "text", limit: int | None = None,
              document: bool = False, count_setting: str = "BERTSERVE_MAX_TEXTS_PER_REQUEST") -> None:
        """The per-request limits (texts per request, characters per text or document); `limit`
        and `count_setting` name another count limit than texts per request."""
        s = self.settings
        max_chars, name = ((s.max_chars_per_document, "BERTSERVE_MAX_CHARS_PER_DOCUMENT") if document
                           else (s.max_chars_per_text, "BERTSERVE_MAX_CHARS_PER_TEXT"))
        check_texts(texts, limit or s.max_texts_per_request, max_chars, field, item, name, count_setting)

    def check_text(self, text: str, what: str) -> None:
        """One text (a query) against the characters limit; `what` names it in the message."""
        check_text(text, what, self.settings.max_chars_per_text)

    def check_pairs(self, pairs: Sequence[Sequence[str]], field: str = "pairs") -> None:
        """Pairs: how many per request, and each of their texts."""
        check_count(pairs, self.settings.max_texts_per_request, field, "pair")
        for i, (a, b) in enumerate(pairs):
            check_text(a, f"pair {i}: the first text", self.settings.max_chars_per_text)
            check_text(b, f"pair {i}: the second text", self.settings.max_chars_per_text)

    def long_text(self, model: LoadedModel, body: Any, pairs: bool = False) -> LongText:
        """A request's long-text policy: its `long_text` (and `aggregate`), else `truncate` when sent,
        else BERTSERVE_LONG_TEXT, else the model's own (export --long-text), else truncate. Values
        that contradict each other are a 422 that says which to send. Pairs are never chunked by
        default (a chunk policy asked for with pairs is refused when the texts are read)."""
        sent = body.model_fields_set
        policy: str | None = body.long_text
        if "truncate" in sent and policy is not None:
            raise ValidationError(f"send long_text or truncate, not both (long_text={policy} says what truncate did: "
                                  "truncate=true is long_text=truncate, truncate=false is long_text=error)")
        if body.aggregate is not None and policy != CHUNK:
            raise ValidationError("aggregate applies only with long_text=chunk: send both, or leave aggregate out")
        if policy is None and "truncate" in sent:
            policy = TRUNCATE if body.truncate else ERROR
        own = model.pipeline.long_text
        if policy is None:
            policy = self.settings.long_text or own.policy
            if pairs and policy == CHUNK:
                policy = TRUNCATE
        if policy != CHUNK:
            return LongText(policy)
        return LongText(CHUNK, body.aggregate or (own.aggregate if own.chunk else MEAN))

    async def infer(self, model: LoadedModel, inputs: Sequence[Any], truncate: bool = True,
                    direction: str = "right", long_text: LongText | None = None) -> tuple[list[list[Encoded]], Any]:
        """Featurize (small requests on the event loop, larger ones in a thread), run every window
        through the model's batcher, and hand back the features and the outputs in the shape the
        task's post-processing takes. With `long_text` (a request's `long_text` policy, see
        `long_text`) texts may be read whole: the outputs are then `runtime.Chunks`."""
        policy = long_text or LongText(TRUNCATE if truncate else ERROR)
        truncate = policy.policy == TRUNCATE
        chunk = model.pipeline.chunks(policy)
        budget = self.settings.request_timeout_s
        try:
            # asyncio's own timeout: anyio's cancel scope cost 19.5 against 5.4 us here (enter and exit)
            async with asyncio.timeout(budget):
                started = time.perf_counter()
                if _characters(inputs) <= INLINE_TOKENIZE_CHARS:
                    features = model.pipeline.featurize(list(inputs), truncate, direction, chunk)
                else:
                    features = await anyio.to_thread.run_sync(model.pipeline.featurize, list(inputs), truncate,
                                                              direction, chunk)
                model.batcher.metrics.record("tokenize", time.perf_counter() - started)
                rows = await model.batcher([item for group in features for item in group])
        except TimeoutError:
            raise TimeoutError_(f"the request took longer than {budget:g} s (BERTSERVE_REQUEST_TIMEOUT_S): "
                                "send fewer or shorter texts, or retry later") from None
        outputs = model.pipeline.assemble(inputs, features, rows, policy.aggregate if chunk else None)
        if model.shadow is not None and direction == "right":
            model.shadow.offer(list(inputs), outputs.rows if isinstance(outputs, Chunks) else outputs, policy)
        return features, outputs

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """CPU-heavy post-processing (NER, QA decoding) in a worker thread, off the event loop."""
        return await anyio.to_thread.run_sync(fn, *args)


def _endpoint(route: Route, context: TaskContext) -> Callable[..., Any]:
    async def endpoint(body: Any) -> Any:
        answer = await route.handle(context, body)
        # serialized once, by pydantic-core: FastAPI would validate the answer against the response
        # model again and encode it in Python (the OpenAPI document still comes from route.response)
        return Response(answer.model_dump_json(exclude_none=route.exclude_none), media_type="application/json")

    # FastAPI reads the body's schema from the signature: give it the route's request model.
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=route.request)],
        return_annotation=route.response)
    endpoint.__name__ = f"{context.spec.name}_{route.path.strip('/').replace('/', '_')}"
    return endpoint


def _endpoint_by_model(route: Route, context: TaskContext) -> Callable[..., Any]:
    """`<path>/{model}`: the same route, the model named in the URL (the body's `model` field is
    hidden from the schema and set from the path)."""
    answer_of = _endpoint(route, context)

    async def endpoint(model: str, body: Any) -> Any:
        return await answer_of(body.model_copy(update={"model": model}))

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
         inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=route.request)],
        return_annotation=route.response)
    endpoint.__name__ = f"{answer_of.__name__}_by_model"
    return endpoint


def _fast(route: Route, context: TaskContext) -> Callable[[bytes], Any]:
    """The same route for the HTTP guard's fast path: the raw body validated by pydantic-core, the
    answer serialized once; None for a body that does not validate (FastAPI then answers it)."""
    request: type[BaseModel] = route.request

    async def handle(raw: bytes) -> bytes | None:
        try:
            body = request.model_validate_json(raw)
        except PydanticValidationError:
            return None
        answer: BaseModel = await route.handle(context, body)
        return answer.model_dump_json(exclude_none=route.exclude_none).encode()

    return handle


def install_task_routes(app: FastAPI, served: Callable[[], ServedModels | None], settings: Any,
                        fast_paths: dict[str, Callable[[bytes], Any]] | None = None) -> list[str]:
    """A POST route for every route of every registered task (and its fast path in `fast_paths`);
    returns the paths."""
    paths: list[str] = []
    for spec in tasks().values():
        context = TaskContext(spec, served, settings)
        for route in spec.routes:
            if fast_paths is not None:
                fast_paths[route.path] = _fast(route, context)
            app.add_api_route(route.path, _endpoint(route, context), methods=["POST"],
                              response_model=route.response, responses=error_responses(route.path),
                              response_model_exclude_none=route.exclude_none, summary=route.summary,
                              tags=[spec.name])
            paths.append(route.path)
            if route.by_model:
                path = route.path + "/{model}"
                app.add_api_route(path, _endpoint_by_model(route, context), methods=["POST"],
                                  response_model=route.response, responses=error_responses(path),
                                  response_model_exclude_none=route.exclude_none,
                                  summary=f"{route.summary} (the served model named in the path)", tags=[spec.name])
                paths.append(path)
    return paths
