"""The bertserve BentoML service: `bentoml serve` from the repository root starts it.

Routes are a FastAPI app mounted into the BentoML service (BentoML's ASGI integration), so that
requests are validated by the shared pydantic schemas and every error has the one body shape.
The inference routes come from the task registry (`service/routes.py`); this file adds `/info` and
`/admin/reload`. BentoML provides the server, workers, `/livez`, `/readyz` and `/metrics`; models
load in `__init__`, and the service is ready only after each has run a warm-up batch. A reload
(`service/reload.py`) swaps in newer versions while it serves.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from bertserve import __version__
from bertserve.errors import ArtifactError, NotFoundError, UnauthorizedError, UnknownModelError
from bertserve.registry import get_task
from bertserve.schemas import ErrorBody, InfoResponse, ModelInfo, ReloadRequest, ReloadResponse
from bertserve.store import demo_training
from service import heap
from service.docs import install_docs
from service.http import ERROR_RESPONSES, authorized, install_error_handlers
from service.lifecycle import LIFECYCLE, WORKER_STARTS
from service.models import LoadedModel, ServedModels, load_models, verified_models
from service.reload import Reloader, ReloadRecord, reload_on_sighup
from service.routes import install_task_routes
from service.settings import ServiceSettings
from service.tei import install_tei_routes

log = logging.getLogger("bertserve.service")
SETTINGS = ServiceSettings()

app = FastAPI(
    title="bertserve",
    version=__version__,
    description="Fine-tuned BERT-family encoders behind a batched HTTP API.",
    docs_url=None,  # service/docs.py serves the docs page, with its assets, from here
    redoc_url=None,
    openapi_url="/openapi.json",
)
install_error_handlers(app)
install_docs(app, SETTINGS)
# filled by install_task_routes below, read by the HTTP guard per request (the guard, CORS and the
# error rewriting sit around BentoML's whole app: `service/__init__.py`)
FAST_PATHS: dict[str, Any] = {}


# The page is HTML; its refusals are the one JSON error body (stated per media type: FastAPI would
# otherwise document them as the route's text/html).
_ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "the report page"},
    401: {"content": _ERROR_JSON, "description": ERROR_RESPONSES[401]["description"]},
    404: {"content": _ERROR_JSON, "description": "no model of that name is served (unknown_model), or the model was "
                                                 "exported before bertserve drew reports (not_found)"},
}


RELOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{status: ERROR_RESPONSES[status] for status in (400, 401, 413, 415, 422, 429, 500)},
    404: {"model": ErrorBody, "description": "reloading is off (BERTSERVE_ADMIN_RELOAD; not_found), or a name in "
                                             "`models` is not served (unknown_model)"},
    409: {"model": ErrorBody, "description": "the reload failed (a new version fails its checksums or cannot be "
                                             "loaded): every model stays as it was (reload_failed)"},
    504: {"model": ErrorBody, "description": "not every worker had reloaded within BERTSERVE_RELOAD_TIMEOUT_S"},
}


def report_url(name: str) -> str:
    return f"/models/{name}/report"


class _Served:
    """The models of this worker, set once they are loaded (routes read them per request)."""

    models: ServedModels | None = None


SERVED = _Served()
install_task_routes(app, lambda: SERVED.models, SETTINGS, FAST_PATHS)
install_tei_routes(app, lambda: SERVED.models, SETTINGS, LIFECYCLE)


@bentoml.service(
    name="bertserve", workers=SETTINGS.worker_count(), traffic={"timeout": 60},
    # BentoML's per-request extras, through its configuration (make bench-http measured each)
    logging={"access": {"enabled": SETTINGS.access_log}},
    tracing={} if SETTINGS.tracing else {"excluded_urls": ".*"},
)
@bentoml.asgi_app(app, path="/")
class BertServe:
    def __init__(self) -> None:
        self.settings = SETTINGS  # the HTTP guard and the routes read the same object
        self.lifecycle = LIFECYCLE
        self.reloader = Reloader(self.settings, lambda: SERVED.models, self._swap, ReloadRecord.shared())
        try:  # after reloads (a worker replaced): as they left the other workers
            self.served = ServedModels(load_models(self.settings, latest=self.reloader.startup_latest()))
        except Exception as exc:  # counted: the server gives up after BERTSERVE_WORKER_START_TRIES
            WORKER_STARTS.failed(exc)
            raise
        WORKER_STARTS.started()
        SERVED.models = self.served
        self.reloader.record.ack(self.reloader.generation, {n: m.tag for n, m in self.served.by_name.items()})
        self.reloader.start()
        if self.settings.gc_freeze:  # what loading made lives as long as the worker: out of the GC's walk
            heap.settle()
        self.lifecycle.loaded = True
        self.lifecycle.drain_on_sigterm(self.settings.shutdown_drain_s)

    def _swap(self, served: ServedModels) -> None:
        """A reload's models: requests from now on get them (one reference, set on the event loop)."""
        self.served = SERVED.models = served

    @property
    def models(self) -> dict[str, LoadedModel]:
        """Served models by name."""
        return dict(self.served.by_name)

    @bentoml.on_deployment
    def check_models() -> None:
        """Once, in `bentoml serve`'s own process, before any worker starts: a tampered, truncated or
        missing model file, or a configured tag that is not published, stops the server here with
        a message naming it (a worker failing the same check would be restarted in a loop). A worker
        that fails to start for another reason is retried BERTSERVE_WORKER_START_TRIES times in a row,
        then the server exits 1 naming the cause (`service.lifecycle.WorkerStarts`)."""
        try:
            verified_models(SETTINGS)
        except ArtifactError as exc:
            raise SystemExit(f"bertserve cannot start: {exc}") from None
        WORKER_STARTS.arm(SETTINGS.worker_start_tries)
        if not reload_on_sighup(ReloadRecord.arm()):  # the record every worker looks at for reloads
            log.warning("SIGHUP would restart the workers, not reload them: BentoML's process manager changed; "
                        "use POST /admin/reload (BERTSERVE_ADMIN_RELOAD=true)")

    def __is_ready__(self) -> bool:
        return self.lifecycle.ready  # false while loading and once SIGTERM has come (draining)

    @app.get("/info", response_model=InfoResponse, summary="Served models: name, task, tag, variant, parity, metrics")
    async def info(self) -> InfoResponse:
        return InfoResponse(
            version=__version__,
            models={
                name: ModelInfo(name=name, tag=m.tag, task=m.task, default=self.served.defaults.get(m.task) == name,
                                routes=[r.path for r in get_task(m.task).routes], variant=m.variant,
                                variants=m.choice.public() if m.choice else None,
                                demo=m.card.demo, providers=list(m.pipeline.backend.providers),
                                card=m.card.public(), report=report_url(name) if m.report else None,
                                shadow=m.shadow_info(), **get_task(m.task).info(m.card))
                for name, m in self.served.by_name.items()
            },
            defaults=dict(self.served.defaults),
            admin_reload=self.settings.admin_reload,
            training=(demo_training() or {}).get("pending", []),
        )

    @app.post("/admin/reload", response_model=ReloadResponse, responses=RELOAD_RESPONSES,
              summary="Serve the newest published version of the served models, in every worker, without a restart")
    async def admin_reload(self, body: ReloadRequest | None = None) -> ReloadResponse:
        """Each served model (or those `models` names) is replaced by the newest published version of
        its store name, verified against its checksums and warmed up first; in the default
        configuration a task that had no model gets its latest. Requests in flight finish on the model
        they started with. Answers once every worker serves the new tags. Off unless
        BERTSERVE_ADMIN_RELOAD=true; needs the API key when BERTSERVE_API_KEY is set."""
        if not self.settings.admin_reload:
            raise NotFoundError("POST /admin/reload is off: start the service with BERTSERVE_ADMIN_RELOAD=true "
                                "(with BERTSERVE_API_KEY, so that only key holders can reload), or send SIGHUP to "
                                "`bentoml serve`")
        return await self.reloader.everywhere(body.models if body is not None else None)

    @app.get("/models/{name}/report", response_class=HTMLResponse, responses=REPORT_RESPONSES,
             summary="A served model's report: training curves, quality, parity and latency, as one HTML page")
    async def report(self, name: str, request: Request) -> HTMLResponse:
        """The page export drew for the model served under `name` (GET /info lists the names). It
        shows held-out examples, so it needs the API key when one is set."""
        if self.settings.api_key is not None and not authorized(request.headers.get("authorization", ""),
                                                                self.settings.api_key):
            raise UnauthorizedError("a valid API key is required: send the header `Authorization: Bearer <key>`")
        model = self.served.by_name.get(name)
        if model is None:
            raise UnknownModelError(f"no model named {name!r} is served; served here: "
                                    f"{', '.join(self.served.by_name) or 'none'} (GET /info lists them)")
        if model.report is None:
            raise NotFoundError(f"model {name!r} ({model.tag}) was exported before bertserve drew model reports: "
                                "export its training directory again to get one")
        page = await anyio.to_thread.run_sync(model.report.read_bytes)
        return HTMLResponse(page, headers={"cache-control": "no-cache"})
