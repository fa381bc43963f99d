"""A small HTTP client for a running bertserve service (used by `bertserve evaluate --url`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.artifact import ModelCard
from bertserve.errors import ConfigError
from bertserve.registry import get_task

QA_BATCH = 16  # items per /qa request
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

    def card(self, task: str) -> tuple[str, ModelCard]:
        info = self.http.get("/info").raise_for_status().json()
        if task not in info["models"]:
            raise ConfigError(f"the service at {self.http.base_url} serves no {task} model")
        model = info["models"][task]
        return model["tag"], ModelCard.from_dict(model["card"], source=f"{self.http.base_url}/info")

    def predict(self, task: str, inputs: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        """Results in the shape the task's `score` takes (what `postprocess` returns)."""
        endpoint = get_task(task).endpoint
        field = "items" if task == "qa" else "texts"
        if task == "qa":  # each item is several 384-token windows: keep one request's work moderate
            batch_size = min(batch_size, QA_BATCH)
        out: list[dict[str, Any]] = []
        for start in range(0, len(inputs), batch_size):
            response = self._post(endpoint, {field: list(inputs[start : start + batch_size])})
            if response.status_code != 200:
                raise ConfigError(f"{endpoint} answered {response.status_code}: {response.text[:300]}")
            body = response.json()
            if "embeddings" in body:
                out.extend({"embedding": np.asarray(v, dtype=np.float32)} for v in body["embeddings"])
            else:
                out.extend(body["results"])
        return out
