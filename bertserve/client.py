"""A small HTTP client for a running bertserve service (used by `bertserve evaluate --url`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bertserve.artifact import ModelCard
from bertserve.errors import ConfigError
from bertserve.registry import get_task

RETRIES = 5


class ServiceClient:
    def __init__(self, url: str, timeout: float = 60.0, api_key: str | None = None):
        import httpx

        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers)

    def _post(self, endpoint: str, body: dict[str, Any]) -> Any:
        """POST, retrying a 503 (busy or starting) with backoff, as the service asks."""
        for attempt in range(RETRIES - 1):
            response = self.http.post(endpoint, json=body)
            if response.status_code != 503:
                return response
            time.sleep(0.5 * 2**attempt)
        return self.http.post(endpoint, json=body)

    def reload(self, models: Sequence[str] | None = None) -> dict[str, Any]:
        """POST /admin/reload: the service serves the newest published version of `models` (None:
        of every served model) in every worker; returns its answer. A refusal raises ConfigError
        saying how to get past it."""
        import httpx

        url = str(self.http.base_url)
        try:
            response = self.http.post("/admin/reload", json={"models": list(models) if models else None})
        except httpx.HTTPError as exc:
            raise ConfigError(f"no bertserve service answers at {url} ({type(exc).__name__}): start it "
                              "(`make serve`, `bentoml serve`) or give its URL") from None
        if response.status_code == 200:
            answer: dict[str, Any] = response.json()
            return answer
        try:
            error = response.json()
            message, kind = str(error["error"]), str(error["error_type"])
        except (ValueError, KeyError, TypeError):
            message, kind = response.text[:200], ""
        if response.status_code == 401:
            message = "the service needs its API key: set BERTSERVE_API_KEY (or --api-key) to the service's key"
        elif kind == "not_found":  # reloading is off there (the message says how to turn it on)
            message = f"{url}: {message}"
        raise ConfigError(f"reload refused ({response.status_code} {kind}): {message}")

    def served(self) -> dict[str, Any]:
        info: dict[str, Any] = self.http.get("/info").raise_for_status().json()
        return info

    def card(self, task: str | None = None, model: str | None = None) -> tuple[str, str, ModelCard]:
        """(served name, store tag, card) of the model `model` names, or of `task`'s default."""
        info = self.served()
        name = model or (info.get("defaults") or {}).get(task or "")
        if name is None and task in info["models"]:  # a server that keys models by task
            name = task
        if name not in info["models"]:
            served = ", ".join(f"{n} ({m['task']})" for n, m in info["models"].items()) or "none"
            what = f"no model named {model!r}" if model else f"no {task} model"
            raise ConfigError(f"the service at {self.http.base_url} serves {what}; it serves: {served}")
        entry = info["models"][str(name)]
        return str(name), str(entry["tag"]), ModelCard.from_dict(entry["card"], source=f"{self.http.base_url}/info")

    def predict(self, task: str, inputs: Sequence[Any], batch_size: int = 32,
                model: str | None = None, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Results in the shape the task's `score` takes (what `postprocess` returns), from the
        task's own route, the served model `model` (None: the task's default); `extra` fields go
        into every request body (e.g. `long_text`)."""
        spec = get_task(task)
        endpoint = spec.endpoint
        batch_size = min(batch_size, spec.client_batch_size or batch_size)
        out: list[dict[str, Any]] = []
        for start in range(0, len(inputs), batch_size):
            body = spec.request_body(list(inputs[start : start + batch_size]))
            if model is not None:
                body["model"] = model
            body.update(extra or {})
            response = self._post(endpoint, body)
            if response.status_code != 200:
                raise ConfigError(f"{endpoint} answered {response.status_code}: {response.text[:300]}")
            out.extend(spec.parse_response(response.json()))
        return out
