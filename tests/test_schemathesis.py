"""schemathesis over every operation of our /openapi.json, with every check, against the in-process
service (the session's tiny models): what `schemathesis run --checks all` does against a server.

Its phases: the documented examples, the coverage phase (boundary values of every constraint the
schema states, each parameter missing or of another type, methods the schema does not list) and
the fuzzing phase (MAX_EXAMPLES generated requests per operation, both schema-valid ones, which
must be accepted, and schema-violating ones, which must be refused with a 4xx).
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import schemathesis
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.engine import Status, events
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

# generated requests per operation in the fuzzing phase (the coverage phase adds its own)
MAX_EXAMPLES = 50

# Refusals of schema-valid requests that no schema can foresee: they depend on the served model
# (its window in tokens, whether it reads pairs, its embedding width, its vocabulary, its head,
# its window stride), not on the request's shape, and each says what to send instead. The only
# answers `positive_data_acceptance` lets through beyond its own list: a 422 (413 in TEI's dialect,
# which says 413 for an input too long) whose message is one of these.
MODEL_DEPENDENT = (
    "tokens and the model takes",  # truncate=false and a text longer than the model's window
    "tokens; this model takes questions of",  # a QA question that leaves no room for the context
    "was trained on",  # pairs to a model trained on single texts, or texts to a pair model
    "this model's embeddings have",  # `dimensions` other than the model's
    "below the vocabulary size",  # /tei/decode: ids the tokenizer does not have
    "cannot be honoured",  # an HF parameter other than the model's own (its head, stride, window)
)


@schemathesis.check
def positive_data_acceptance_beyond_the_model(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' `positive_data_acceptance`, with the model-dependent refusals above let through."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if response.status_code in (413, 422):
            message = str(json.loads(response.content or b"{}").get("error", ""))
            if any(fragment in message for fragment in MODEL_DEPENDENT):
                return None
        raise


@schemathesis.check
def negative_data_rejection_in_teis_dialect(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' `negative_data_rejection`, with a 413 counted as a rejection under /tei/: TEI's
    error dialect answers too many or too long inputs 413 (`compat.tei.tei_error`), which the
    check's list of rejection statuses lacks. Elsewhere such inputs are a 422, as the check wants,
    except a body over the byte limit: that is a 413 everywhere, refused before it is read."""
    try:
        return negative_data_rejection(ctx, response, case)
    except AcceptedNegativeData:
        if response.status_code == 413 and case.operation.path.startswith("/tei/"):
            return None
        if response.status_code == 413 and b'"payload_too_large"' in (response.content or b""):
            return None  # a body over BERTSERVE_MAX_REQUEST_BYTES is refused before it is read
        raise


class OnTheClientsLoop:
    """The service's ASGI app as schemathesis calls it. schemathesis runs its requests on an event
    loop of its own; the app was started (models loaded, batchers bound to a loop) by the session's
    TestClient, so each request is read whole, run on that client's loop, and its answer replayed."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the session's client started the app and stops it
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        incoming = []
        while True:
            message = await receive()
            incoming.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        outgoing: list[dict[str, Any]] = []
        await anyio.to_thread.run_sync(self.client.portal.call, self._run, scope, incoming, outgoing)
        for message in outgoing:
            await send(message)

    async def _run(self, scope: dict[str, Any], incoming: list[dict[str, Any]],
                   outgoing: list[dict[str, Any]]) -> None:
        pending = list(incoming)

        async def receive() -> dict[str, Any]:
            return pending.pop(0) if pending else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            outgoing.append(message)

        await self.client.app(scope, receive, send)


@dataclass
class Run:
    cases: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        phases = sorted({phase for _, phase in self.cases})
        operations = sorted({op for op, _ in self.cases})
        rows = [f"{'operation':45} " + " ".join(f"{p:>9}" for p in phases)]
        rows += [f"{op:45} " + " ".join(f"{self.cases[op, p]:9d}" for p in phases) for op in operations]
        total = sum(self.cases.values())
        rows.append(f"{len(operations)} operations, {total} cases in {self.seconds:.1f} s, "
                    f"{len(self.failures)} failures")
        return "\n".join(rows)


def run_schemathesis(client: Any, max_examples: int = MAX_EXAMPLES) -> Run:
    schema = schemathesis.openapi.from_asgi("/openapi.json", OnTheClientsLoop(client))
    schema.config.generation.update(max_examples=max_examples, deterministic=True)
    # every check; the two data checks as narrowed above
    schema.config.checks.update(included_check_names=["all"],
                                excluded_check_names=["positive_data_acceptance", "negative_data_rejection"])
    run = Run()
    started = time.perf_counter()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            run.cases[recorder.label, event.phase.value] += len(recorder.cases)
            if event.status not in (Status.FAILURE, Status.ERROR):
                continue
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    interaction = recorder.interactions.get(case_id)
                    answer = interaction.response if interaction else None
                    run.failures.append(
                        f"{recorder.label} [{event.phase.value}] {check.name}: {check.failure_info.failure.title}\n"
                        f"  {check.failure_info.code_sample[:800]}\n"
                        f"  -> {answer.status_code if answer else '-'} "
                        f"{answer.content[:300]!r}" if answer and answer.content else "")
        elif isinstance(event, events.NonFatalError):
            run.failures.append(f"{event.label}: error {event.value!r}")
        elif isinstance(event, events.FatalError):
            run.failures.append(f"fatal: {event.exception!r}")
    run.seconds = time.perf_counter() - started
    return run


def test_schemathesis_every_operation_every_check(service_client):
    run = run_schemathesis(service_client)
    print("\n" + run.table())
    assert not run.failures, "\n".join(run.failures[:20])
    document = service_client.get("/openapi.json").json()
    operations = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    # every operation ran; "Stateful tests" is schemathesis' phase that chains operations through the
    # links it infers (a served model's name from GET /info into GET /models/{name}/report)
    assert {op for op, _ in run.cases} - {"Stateful tests"} == operations
    fuzzed = {op: n for (op, phase), n in run.cases.items() if phase == "fuzzing"}
    # every operation with a body ran its MAX_EXAMPLES generated requests (no early stop on a failure)
    assert all(n == MAX_EXAMPLES for op, n in fuzzed.items() if op.startswith("POST")), fuzzed
