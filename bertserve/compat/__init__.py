"""Other servers' wire formats, so that the clients people already have work unchanged: Text
Embeddings Inference (`tei`) and the Hugging Face Inference API task shapes (`hf`). Only schemas and
shape conversions live here; each task module declares the routes that use them."""

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema


class ModelFromUrl(BaseModel):
    """A body in another server's shape: unknown fields refused (a field we would ignore is one we
    cannot honour), and the served model to answer set from the URL (`/hf/<task>/<model>`), hidden
    from the schema, never part of their body."""

    model_config = ConfigDict(extra="forbid")
    model: SkipJsonSchema[str | None] = Field(None, exclude=True)


def answers(model: type, count: Callable[[dict[str, Any]], int] | None,
            coherent: Callable[[dict[str, Any], Any], str | None] | None = None) -> Callable[[dict[str, Any], Any], str | None]:
    """A load-test (and image-test) check for a route in another server's shape: the answer has the
    schema, `count(body_sent)` top-level items (unless count is None), and passes `coherent(body_sent, answer)`."""
    from bertserve.schemas import validated

    def check(payload: dict[str, Any], body: Any) -> str | None:
        response, problem = validated(model, body)
        if response is None:
            return problem
        root = response.root
        got = len(root) if isinstance(root, list) else 1
        if count is not None and got != count(payload):
            return f"{got} answers for {count(payload)} inputs"
        return coherent(payload, response.root) if coherent is not None else None

    return check
