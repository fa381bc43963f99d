"""The API document and its docs page.

`/openapi.json` states the request limits the service checks itself (texts per request, characters
per text, ...; `bertserve.schemas.Documented`), with their values from this server's settings, so
that it describes what this server accepts, as it is configured.

The docs page (`/docs/api`, Swagger UI) has its assets served from here, not from a CDN.

FastAPI's own docs page loads Swagger UI's script and style sheet from a public CDN, so it stays
blank on a machine without internet access (an air-gapped cluster, a laptop on a plane). The same
files ship in the `fastapi-offline` package (pinned in requirements.lock); the page references
only them, under `ASSETS`.
"""

from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from bertserve.schemas import LIMITS

DOCS = "/docs/api"
ASSETS = DOCS + "/assets"
# Swagger UI's bundle, its style sheet and a favicon, as the package ships them
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")


def assets_directory() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def with_limits(node: Any, settings: Any) -> Any:
    """The document with each limit's value written in from `settings` (in place)."""
    if isinstance(node, dict):
        for keyword, setting in node.pop(LIMITS, {}).items():
            node[keyword] = getattr(settings, setting)
        for value in node.values():
            with_limits(value, settings)
    elif isinstance(node, list):
        for value in node:
            with_limits(value, settings)
    return node


def install_docs(app: FastAPI, settings: Any) -> None:
    """`/openapi.json` with this server's limits, `GET /docs/api` and its assets; the app must be
    created with `docs_url=None`."""
    generated = app.openapi  # FastAPI's, generated once from the routes and their schemas

    def openapi() -> dict[str, Any]:
        # per request: settings are read when they are used (the tests tighten them)
        return dict(with_limits(copy.deepcopy(generated()), settings))

    app.openapi = openapi  # type: ignore[method-assign]
    directory = assets_directory()
    missing = [name for name in ASSET_FILES if not (directory / name).is_file()]
    if missing:  # a fastapi-offline that no longer ships them: fail at import, not in a browser
        raise RuntimeError(f"fastapi-offline ({directory}) lacks {', '.join(missing)}: reinstall requirements.lock")
    app.mount(ASSETS, StaticFiles(directory=directory), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            # no validator badge: Swagger UI would fetch it from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})})
