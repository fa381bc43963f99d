"""HTTP edges: the error table applied to responses, the body-size guard, input limits.

Every error leaves as `{"error": ..., "error_type": ...}`. 4xx messages say how to fix the
request and never echo it; 5xx messages are generic and the details go to the log.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertserve.compat.tei import PREFIX as TEI_PREFIX
from bertserve.compat.tei import tei_error
from bertserve.errors import (
    GENERIC_500,
    BertserveError,
    EmptyInputError,
    InputTooLongError,
    OverloadedError,
    PayloadTooLargeError,
    TooManyInputsError,
    UnauthorizedError,
    ValidationError,
)
from bertserve.schemas import ErrorBody
from service import heap, observability

log = logging.getLogger("bertserve.service")

# For the OpenAPI document: every inference route may answer these.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why}
    for status, why in (
        (400, "empty body or input, or a body that is not JSON or not UTF-8"),
        (401, "BERTSERVE_API_KEY is set and the request has no or a wrong `Authorization: Bearer` key"),
        (404, "the `model` named (in the body or the path) is not a served model of the route's task"),
        (413, "request body over BERTSERVE_MAX_REQUEST_BYTES"),
        (415, "a body sent without `Content-Type: application/json`"),
        (422, "invalid input: wrong types, too many texts, a text over the limits"),
        (429, "BERTSERVE_MAX_CONCURRENT_REQUESTS requests already in flight (Retry-After: 1)"),
        (503, "no model published for this task, still loading, or at capacity"),
        (504, "the request took longer than BERTSERVE_REQUEST_TIMEOUT_S"),
        (500, "unexpected failure (generic message; details in the server log)"),
    )
}
# The routes under /tei answer in TEI's dialect (`compat.tei.tei_error`): too many or too long
# inputs are a 413, a failed inference a 424 (never a 500).
TEI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{status: entry for status, entry in ERROR_RESPONSES.items() if status != 500},
    413: {"model": ErrorBody, "description": "request body over BERTSERVE_MAX_REQUEST_BYTES, too many inputs, or "
          "an input over the limits (TEI's `validation`)"},
    424: {"model": ErrorBody, "description": "the inference failed (TEI's `backend`; details in the server log)"},
}


def error_responses(path: str) -> dict[int | str, dict[str, Any]]:
    """The error answers the OpenAPI document lists for an inference route at `path`."""
    return TEI_ERROR_RESPONSES if is_tei(path) else ERROR_RESPONSES


def error_response(status: int, message: str, error_type: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status,
                        headers=dict(headers) if headers else None)


def _from_error(exc: BertserveError, path: str = "") -> JSONResponse:
    status, error_type = exc.status, exc.error_type
    if is_tei(path):  # TEI's dialect, which tells a too-long input (413) from other refusals
        status, error_type = tei_error(status, error_type, exc)
    if exc.status >= 500 and exc.error_type in ("backend", "internal"):
        log.error("request failed: %r", exc)
        return error_response(status, GENERIC_500, error_type)
    return error_response(status, str(exc), error_type)


def is_tei(path: str) -> bool:
    return path.startswith(TEI_PREFIX + "/")


def _describe(errors: Sequence[Any]) -> str:
    parts = []
    for err in list(errors)[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _placeholder(annotation: Any) -> str:
    """A JSON placeholder for a field of this type: `"..."`, `[...]`, or an object's required fields."""
    origin = get_origin(annotation)
    if origin is Annotated:  # a type with its documented limits: the type
        return _placeholder(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return _placeholder(get_args(annotation)[0])
    if origin is list:
        args = get_args(annotation)
        inner = _placeholder(args[0]) if args else '"..."'
        return f"[{inner}, ...]" if inner.startswith("{") else "[...]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _example_of(annotation)
    if annotation is bool:
        return "true"
    if annotation in (int, float):
        return "1"
    return '"..."'


def _example_of(model: type[BaseModel]) -> str:
    fields = [f'"{name}": {_placeholder(info.annotation)}' for name, info in model.model_fields.items()
              if info.is_required()]
    if not fields and model.model_fields:  # alternatives, none required (`texts` or `pairs`): the first
        name, info = next(iter(model.model_fields.items()))
        fields = [f'"{name}": {_placeholder(info.annotation)}']
    return "{" + ", ".join(fields) + "}"


def body_example(scope: Scope) -> str:
    """The smallest valid body of the route this request was routed to, e.g. `{"texts": [...]}`:
    its required fields, read from the request model FastAPI resolved for the route."""
    field = getattr(scope.get("route"), "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return _example_of(model)
    return "{...}"


def _send_json_hint(scope: Scope) -> str:
    return f"send a JSON object such as {body_example(scope)} with Content-Type: application/json"


def _whole_body_errors(errors: Sequence[Any]) -> list[Any]:
    return [e for e in errors if tuple(e.get("loc", ())) == ("body",)]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BertserveError)
    async def _bertserve(request: Request, exc: BertserveError) -> JSONResponse:
        return _from_error(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        hint = _send_json_hint(request.scope)
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, f"the body is not valid JSON: {hint}", "validation")
        whole = _whole_body_errors(errors)
        if any(e.get("type") == "missing" for e in whole):
            return error_response(400, f"the body is empty: {hint}", "empty")
        if whole:  # the body parsed, but it is not an object (or was not parsed as JSON at all)
            content_type = request.headers.get("content-type", "")
            if not _is_json(content_type):
                sent = f"as {content_type.split(';')[0].strip()!r}" if content_type else "without a Content-Type"
                return error_response(415, f"the body was sent {sent}, not as JSON: {hint}",
                                      "unsupported_media_type")
            return error_response(422, f"the body must be a JSON object: {hint}", "validation")
        return error_response(422, _describe(errors), "validation")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's body parsing, on bytes that are not UTF-8
            return error_response(400, f"the body is not UTF-8 text: {_send_json_hint(request.scope)}",
                                  "validation")
        status, message, error_type = http_error(exc.status_code, request.scope, exc.headers or {})
        return error_response(status, message, error_type, exc.headers)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def http_error(status: int, scope: Scope, headers: Mapping[str, str]) -> tuple[int, str, str]:
    """(status, message, error_type) for an HTTP-level refusal that is not one of our own errors:
    an unknown path, a method the route does not take, or anything else the frameworks answer."""
    allow = next((v for k, v in headers.items() if k.lower() == "allow"), "")
    if status == 404:
        return 404, ("no such route: the API's routes are listed at /docs/api and /openapi.json "
                     "(health: /livez, /readyz; metrics: /metrics)"), "not_found"
    if status == 405:
        method = str(scope.get("method", ""))
        return 405, f"{method} is not allowed here: use {allow or 'another method'}", "method_not_allowed"
    if status == 413:
        return 413, "request body too large: send fewer or shorter texts", "payload_too_large"
    if status == 415:
        return 415, "send JSON with Content-Type: application/json", "unsupported_media_type"
    if status == 429:
        return 429, "too many requests in flight: retry shortly", "overloaded"
    if status == 503:
        return 503, "the service is not ready: retry shortly", "unavailable"
    if status == 504:
        return 504, "the request took too long: send fewer or shorter texts, or retry later", "timeout"
    if status >= 500:
        return status, GENERIC_500, "internal"
    return status, "the request could not be read: send a JSON body with Content-Type: application/json", "validation"


class JsonErrors:
    """Pure ASGI middleware around BentoML's own app (`Service.add_asgi_middleware`): BentoML
    answers an unknown path, or a wrong method on its own routes (`POST /readyz`), in plain text,
    outside our FastAPI app and its handlers. Such an answer (any 4xx/5xx that is not JSON) leaves
    in the one error shape, with its status and headers (`Allow`) kept. Under `/tei/` every error
    leaves in TEI's dialect of that shape (its error types and statuses: `compat.tei.tei_error`),
    whichever layer refused the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        held_json = False
        body = bytearray()
        tei = is_tei(str(scope.get("path", "")))

        async def rewriting_send(message: Message) -> None:
            nonlocal held, held_json
            if message["type"] == "http.response.start" and message["status"] >= 400:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                held_json = _is_json(headers.get("content-type", ""))
                if tei or not held_json:
                    held = message  # replaced once its body has gone by
                    return
            elif message["type"] == "http.response.body" and held is not None:
                body.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, held = held, None
                kept = [(k, v) for k, v in start.get("headers", [])
                        if k.lower() not in (b"content-type", b"content-length")]
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in kept}
                status, text, error_type = http_error(start["status"], scope, headers)
                if held_json:  # one of our own error bodies: keep its message
                    try:
                        ours = json.loads(bytes(body))
                        text, error_type = str(ours["error"]), str(ours["error_type"])
                        status = start["status"]
                    except (ValueError, KeyError, TypeError):
                        pass
                if tei:
                    status, error_type = tei_error(status, error_type)
                await _send_json(send, status, text, error_type, kept)
                return
            await send(message)

        await self.app(scope, receive, rewriting_send)


class Guard:
    """Pure ASGI middleware around BentoML's whole app (`service/__init__.py`): only BentoML's own
    metrics, tracing and timeout layers, the error rewriting and CORS come before it. On inference
    routes (POST): the API key when one is configured (401), the concurrency limit (429 at once,
    never a queue). On all: the body-size limit (413). A refusal sent before the body was read is
    followed by draining the rest of the body, bounded (`_refuse` says why). While draining for
    shutdown, `Connection: close`; any escaped exception becomes a generic 500, so that nothing
    internal reaches the caller; the request's stage timings go out as a `Server-Timing` header.
    Limits are read from `settings` per request.

    `fast_paths` (path -> handler of the raw JSON body) answers valid POST bodies of the task routes
    without BentoML's context layer and router, or the mounted FastAPI app's middleware stack,
    routing, dependency and re-validation layers: the body is validated once by
    pydantic-core from the bytes and the answer serialized once. A handler returns None for a body
    that does not validate; FastAPI then answers it, so every refusal keeps its one error shape."""

    def __init__(self, app: ASGIApp, settings: Any, lifecycle: Any = None,
                 fast_paths: Mapping[str, Callable[[bytes], Awaitable[bytes | None]]] | None = None):
        self.app = app
        self.settings = settings
        self.lifecycle = lifecycle
        self.fast_paths = fast_paths if fast_paths is not None else {}
        self.in_flight = 0
        self.served: dict[tuple[Any, ...], int] = {}  # requests answered per keep-alive connection
        self.settler = heap.Settler(settings.gc_freeze)  # the heap frozen once warm

    def last_on_connection(self, scope: Scope, weight: int = 1) -> bool:
        """Whether this answer closes its connection under BERTSERVE_KEEPALIVE_REQUESTS (several workers
        only). An answer counts as many requests as the texts (model inputs) it ran, at least one, so
        that a few connections carrying large requests are rebalanced as often as many carrying one
        text each. A connection is its client address, unique while it is open; the count of a
        connection that closed on its own lingers until the table is cleared at 10,000 entries."""
        limit = self.settings.keepalive_requests
        client = scope.get("client")
        if not limit or client is None or self.settings.worker_count() < 2:
            return False
        key = tuple(client)
        count = self.served.pop(key, 0) + max(1, weight)
        if count >= limit:
            return True
        if len(self.served) >= 10_000:
            self.served.clear()
        self.served[key] = count
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings
        headers = dict(scope.get("headers") or [])
        inference = scope.get("method") == "POST"
        if inference and settings.api_key is not None and not _authorized(headers, settings.api_key):
            error: BertserveError = UnauthorizedError("a valid API key is required: send the header `Authorization: Bearer <key>`")
            await self._refuse(receive, send, headers, error, [(b"www-authenticate", b"Bearer")])
            return
        if inference and self.in_flight >= settings.max_concurrent_requests:
            error = OverloadedError(f"{settings.max_concurrent_requests} requests are in flight "
                                    "(BERTSERVE_MAX_CONCURRENT_REQUESTS): retry shortly")
            await self._refuse(receive, send, headers, error, [(b"retry-after", b"1")])
            return
        if not inference:
            await self._serve(scope, receive, send, headers)
            return
        self.in_flight += 1  # before any await: the check above and this count are one step
        try:
            await self._serve(scope, receive, send, headers)
        finally:
            self.in_flight -= 1
            self.settler.answered()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
        max_bytes = self.settings.max_request_bytes
        too_large = PayloadTooLargeError(
            f"request body over {max_bytes} bytes (BERTSERVE_MAX_REQUEST_BYTES): send fewer or shorter texts"
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            await self._refuse(receive, send, headers, too_large, close=True)
            return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            # Read the body here, counting: a streamed (chunked) body over the limit is a 413 before
            # the app sees it; raised from inside the app's body parsing it would become a 400.
            chunks, seen, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                if seen > max_bytes:
                    more = message.get("more_body", False)
                    await self._refuse(receive, send, headers, too_large, close=True, read=seen, ended=not more)
                    return
                more = message.get("more_body", False)
            replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replaying_receive() -> Message:
                return replay.pop() if replay else await receive()

            buffered_receive: Receive = replaying_receive
        else:
            buffered_receive = receive
        started = False
        timings = observability.start_request()

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                timing = observability.server_timing(timings) if timings else b""
                extra = [(b"server-timing", timing)] if timing else []
                if (self.lifecycle is not None and self.lifecycle.draining) or self.last_on_connection(
                        scope, int(timings.get(observability.WINDOWS_KEY, 1))):
                    extra.append((b"connection", b"close"))  # shutting down, or rebalancing: reconnect
                if extra:
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            # only POST: the task routes take no other method (FastAPI answers those 405, with Allow)
            fast = self.fast_paths.get(scope.get("path", "")) if scope.get("method") == "POST" else None
            if fast is not None and _is_json(headers.get(b"content-type", b"").decode("latin-1")):
                try:
                    answer = await fast(replay[0]["body"])
                except BertserveError as exc:
                    await _from_error(exc, scope.get("path", ""))(scope, buffered_receive, tracked_send)
                    return
                if answer is not None:
                    await tracked_send({"type": "http.response.start", "status": 200, "headers": [
                        (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
                    await tracked_send({"type": "http.response.body", "body": answer})
                    return
            await self.app(scope, buffered_receive, tracked_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_json(send, 500, GENERIC_500, "internal")

    async def _refuse(self, receive: Receive, send: Send, headers: dict[bytes, bytes], error: BertserveError,
                      extra_headers: Sequence[tuple[bytes, bytes]] = (), *, close: bool = False,
                      read: int = 0, ended: bool = False) -> None:
        """Answer `error` before the app sees the request, and still have the client read it.

        A server that answers and closes while the client is still sending makes the kernel reset
        the connection; clients that write the whole body before reading (Python's `urllib` and
        `requests`, most SDKs) then see `Connection reset by peer`, not the answer. So: the answer
        goes out first (clients that read while sending, like curl, have it at once), then the rest
        of the body is read and thrown away, up to BERTSERVE_MAX_DRAIN_BYTES and
        BERTSERVE_MAX_DRAIN_S, and only then does the response end (and, for a 413, the connection
        close). A body announced larger than the drain bound is not read at all, nor one whose
        client waits for `100 Continue` (it never sends the body)."""
        settings = self.settings
        extra = [*extra_headers, *([(b"connection", b"close")] if close else [])]
        await _send_json(send, error.status, str(error), error.error_type, extra, more_body=True)
        length = headers.get(b"content-length")
        announced = int(length) if length is not None and length.isdigit() else None
        waiting_for_continue = headers.get(b"expect", b"").lower() == b"100-continue" and read == 0
        bound = settings.max_drain_bytes
        if not ended and not waiting_for_continue and (announced is None or announced - read <= bound):
            drained = 0
            with anyio.move_on_after(settings.max_drain_s):
                while drained <= bound:
                    message = await receive()
                    if message["type"] != "http.request":
                        break  # the client went away
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _authorized(headers: dict[bytes, bytes], key: Any) -> bool:
    return authorized(headers.get(b"authorization", b"").decode("latin-1"), key)


def authorized(header: str, key: Any) -> bool:
    """The `Authorization` header carries the bearer key (compared in constant time)."""
    expected = "Bearer " + key.get_secret_value()
    return hmac.compare_digest(header.encode("latin-1", "replace"), expected.encode("latin-1", "replace"))


async def _send_json(send: Send, status: int, message: str, error_type: str,
                     extra_headers: Sequence[tuple[bytes, bytes]] = (), more_body: bool = False) -> None:
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra_headers]})
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


def check_texts(texts: Sequence[str], max_texts: int, max_chars: int, field: str = "texts",
                item: str = "text", chars_setting: str = "BERTSERVE_MAX_CHARS_PER_TEXT",
                count_setting: str = "BERTSERVE_MAX_TEXTS_PER_REQUEST") -> None:
    """The per-request limits, with messages that say how to fix the request."""
    check_count(texts, max_texts, field, item, count_setting)
    for i, text in enumerate(texts):
        check_text(text, f"{item} {i}", max_chars, chars_setting)


def check_count(inputs: Sequence[Any], max_inputs: int, field: str, item: str,
                setting: str = "BERTSERVE_MAX_TEXTS_PER_REQUEST") -> None:
    if not inputs:
        raise EmptyInputError(f"{field} is empty: send at least one {item}")
    if len(inputs) > max_inputs:
        raise TooManyInputsError(
            f"{len(inputs)} {item}s in one request, the limit is {max_inputs} "
            f"({setting}): split `{field}` over several requests"
        )


def check_text(text: str, what: str, max_chars: int, chars_setting: str = "BERTSERVE_MAX_CHARS_PER_TEXT") -> None:
    """One text: not empty, within the characters limit, valid Unicode; `what` names it ("text 3")."""
    if not text.strip():
        raise EmptyInputError(f"{what} is empty or only whitespace: remove it or send some text")
    if len(text) > max_chars:
        raise InputTooLongError(f"{what} has {len(text)} characters, the limit is {max_chars} ({chars_setting}): "
                              "split the text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} is not valid Unicode (a lone surrogate): send UTF-8 text") from None
