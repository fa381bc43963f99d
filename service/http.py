"""HTTP edges: the error table applied to responses, the body-size guard, input limits.

Every error leaves as `{"error": ..., "error_type": ...}`. 4xx messages say how to fix the
request and never echo it; 5xx messages are generic and the details go to the log.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertserve.errors import (
    GENERIC_500,
    BertserveError,
    EmptyInputError,
    OverloadedError,
    PayloadTooLargeError,
    UnauthorizedError,
    ValidationError,
)
from bertserve.schemas import ErrorBody
from service import observability

log = logging.getLogger("bertserve.service")

# For the OpenAPI document: every inference route may answer these.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why}
    for status, why in (
        (400, "empty input or a body that is not JSON"),
        (401, "BERTSERVE_API_KEY is set and the request has no or a wrong `Authorization: Bearer` key"),
        (413, "request body over BERTSERVE_MAX_REQUEST_BYTES"),
        (422, "invalid input: wrong types, too many texts, a text over the limits"),
        (429, "BERTSERVE_MAX_CONCURRENT_REQUESTS requests already in flight (Retry-After: 1)"),
        (503, "no model published for this task, still loading, or at capacity"),
        (504, "the request took longer than BERTSERVE_REQUEST_TIMEOUT_S"),
        (500, "unexpected failure (generic message; details in the server log)"),
    )
}


def error_response(status: int, message: str, error_type: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


def _from_error(exc: BertserveError) -> JSONResponse:
    if exc.status >= 500 and exc.error_type in ("backend", "internal"):
        log.error("request failed: %r", exc)
        return error_response(500, GENERIC_500, exc.error_type)
    return error_response(exc.status, str(exc), exc.error_type)


def _describe(errors: Sequence[Any]) -> str:
    parts = []
    for err in list(errors)[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BertserveError)
    async def _bertserve(_: Request, exc: BertserveError) -> JSONResponse:
        return _from_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the body is not valid JSON; send a JSON object such as "
                                  '{"texts": ["..."]} with Content-Type: application/json', "validation")
        return error_response(422, _describe(errors), "validation")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        message = exc.detail if exc.status_code < 500 else GENERIC_500
        return error_response(exc.status_code, str(message), kind)


class Guard:
    """Pure ASGI middleware, the first thing a request meets. On inference routes (POST): the API
    key when one is configured (401), the concurrency limit (429 at once, never a queue). On all:
    the body-size limit (413); while draining for shutdown, `Connection: close`; any escaped exception becomes a generic 500, so that nothing
    internal reaches the caller; the request's stage timings go out as a `Server-Timing` header.
    Limits are read from `settings` per request."""

    def __init__(self, app: ASGIApp, settings: Any, lifecycle: Any = None):
        self.app = app
        self.settings = settings
        self.lifecycle = lifecycle
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings
        headers = dict(scope.get("headers") or [])
        inference = scope.get("method") == "POST"
        if inference and settings.api_key is not None and not _authorized(headers, settings.api_key):
            error = UnauthorizedError("a valid API key is required: send the header `Authorization: Bearer <key>`")
            await _send_json(send, error.status, str(error), error.error_type, [(b"www-authenticate", b"Bearer")])
            return
        if inference and self.in_flight >= settings.max_concurrent_requests:
            error = OverloadedError(f"{settings.max_concurrent_requests} requests are in flight "
                                    "(BERTSERVE_MAX_CONCURRENT_REQUESTS): retry shortly")
            await _send_json(send, error.status, str(error), error.error_type, [(b"retry-after", b"1")])
            return
        if not inference:
            await self._serve(scope, receive, send, headers)
            return
        self.in_flight += 1  # before any await: the check above and this count are one step
        try:
            await self._serve(scope, receive, send, headers)
        finally:
            self.in_flight -= 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
        max_bytes = self.settings.max_request_bytes
        too_large = PayloadTooLargeError(
            f"request body over {max_bytes} bytes (BERTSERVE_MAX_REQUEST_BYTES): send fewer or shorter texts"
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            await _send_json(send, 413, str(too_large), too_large.error_type)
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
                    await _send_json(send, 413, str(too_large), too_large.error_type)
                    return
                more = message.get("more_body", False)
            replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def buffered_receive() -> Message:
                return replay.pop() if replay else await receive()
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
                if self.lifecycle is not None and self.lifecycle.draining:
                    extra.append((b"connection", b"close"))  # shutting down: reconnect elsewhere
                if extra:
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, buffered_receive, tracked_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_json(send, 500, GENERIC_500, "internal")


def _authorized(headers: dict[bytes, bytes], key: Any) -> bool:
    given = headers.get(b"authorization", b"")
    expected = b"Bearer " + key.get_secret_value().encode()
    return hmac.compare_digest(given, expected)


async def _send_json(send: Send, status: int, message: str, error_type: str,
                     extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra_headers]})
    await send({"type": "http.response.body", "body": body})


def check_texts(texts: Sequence[str], max_texts: int, max_chars: int, field: str = "texts",
                item: str = "text", chars_setting: str = "BERTSERVE_MAX_CHARS_PER_TEXT") -> None:
    """The per-request limits, with messages that say how to fix the request."""
    if not texts:
        raise EmptyInputError(f"{field} is empty: send at least one {item}")
    if len(texts) > max_texts:
        raise ValidationError(
            f"{len(texts)} {field} in one request, the limit is {max_texts} "
            "(BERTSERVE_MAX_TEXTS_PER_REQUEST): split them over several requests"
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise EmptyInputError(f"{item} {i} is empty or only whitespace: remove it or send some text")
        if len(text) > max_chars:
            raise ValidationError(
                f"{item} {i} has {len(text)} characters, the limit is {max_chars} ({chars_setting}): split the text"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{item} {i} is not valid Unicode (a lone surrogate): send UTF-8 text") from None
