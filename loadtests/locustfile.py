"""Load test of the bertserve HTTP API.

Run from the repository root against a running service:

    locust -f loadtests/locustfile.py --headless --host http://localhost:3000 \
        -u 4 -r 4 -t 60s --only-summary --csv runs/loadtest/classify
    python loadtests/report.py runs/loadtest/classify

Closed loop: each simulated user sends its next request as soon as the previous one is answered
(`wait_time = constant(0)`), so `-u` is the number of requests in flight and requests/s is what the
service sustains at that concurrency, not an offered rate. Set LOADTEST_WAIT_MAX_S to add a
uniform 0..N s think time per user instead.

Texts are generated, no dataset needed: review-like fragments joined into texts of 5 to 120 words,
mostly short, and mostly one text per request, as real clients send them; LOADTEST_TEXTS_FILE
sends real texts instead (SST-2's dev.tsv, say) and LOADTEST_TEXTS_PER_REQUEST fixes the count per
request. LOADTEST_USER_RATE paces each user (open-loop style) instead. LOADTEST_SEED makes the
texts reproducible (each user draws from its own generator, seeded from the seed and its index).

LOADTEST_STATUS_FILE=PATH writes, at the end, the count and latency percentiles of each HTTP status
(0: no answer) as JSON: what an overload run needs (p95 of the accepted requests only).

Endpoints: every route of every registered task that declares a load-test scenario
(`bertserve.registry.Scenario`): /classify, /embed, /similarity, /v1/embeddings, /ner and /qa, and
those of tasks added with BERTSERVE_TASK_MODULES (LOADTEST_ENDPOINTS=/classify,/embed picks some).
A scenario builds a payload from a `TextSource` and checks the answer; /ner gets news-style
paragraphs (median ~70 words, a tail up to 600: several model windows); /qa gets SQuAD-sized
items: a 6-15 word question on a paragraph of median ~120 words (tail to 600).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The package is normally installed editable; this keeps `locust -f loadtests/locustfile.py`
# working from a plain checkout too, where only the repository root makes `bertserve` importable.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import gevent  # noqa: E402
from locust import FastHttpUser, between, constant, events  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV  # noqa: E402

from bertserve.registry import tasks  # noqa: E402

# Written for this test, not taken from any dataset: a mix of praise, complaints and neutral
# detail, so that both labels come up and texts read like reviews rather than word salad.
FRAGMENTS: tuple[str, ...] = (
    "an absolute delight from start to finish",
    "the acting felt wooden and rehearsed",
    "I would happily watch it again",
    "the plot drags badly in the second half",
    "beautifully shot, with a haunting score",
    "the dialogue is clumsy and full of clichés",
    "a clever script that trusts its audience",
    "I checked my watch more than once",
    "the lead gives a career-best performance",
    "it never quite decides what it wants to be",
    "funny, warm and surprisingly moving",
    "the ending was rushed and unsatisfying",
    "the battery lasts two full days of heavy use",
    "it stopped working after a week",
    "customer support answered within minutes",
    "the packaging arrived torn and the box was dented",
    "exactly as described, no surprises",
    "cheaply made, the buttons already stick",
    "setup took less than five minutes",
    "the instructions were missing half the steps",
    "worth every penny",
    "I returned it the next day",
    "the staff were friendly and attentive",
    "we waited forty minutes for a cold starter",
    "the pasta was perfectly cooked",
    "the room smelled of smoke despite the sign",
    "a quiet street, easy to reach from the station",
    "overpriced for what you get",
    "my kids loved every minute of it",
    "the sound mixing made half the lines inaudible",
    "solid, reliable and well designed",
    "the app crashes every time I open the settings",
    "a bit slow to start, but it rewards patience",
    "not bad, not great, just fine",
    "the colours are vivid and the screen is sharp",
    "it feels like three episodes glued together",
    "honestly one of the best purchases I have made this year",
    "the seats were cramped and the air conditioning was broken",
    "I expected more from such a well-reviewed place",
    "delivery was quick and the courier was polite",
)

MIN_WORDS, MAX_WORDS = 5, 120
# Lognormal word counts: median ~e^2.9 ≈ 18 words, 95% under ~60, a few at the 120 cap;
# real traffic is mostly short comments with a long tail of long ones.
WORDS_MU, WORDS_SIGMA = 2.9, 0.75
# Most clients send one text; batch clients send a handful.
SINGLE_TEXT_SHARE = 0.8
MULTI_TEXTS_RANGE = (2, 8)

# NER: news-style sentences with names, places and organisations (written for this test).
NEWS: tuple[str, ...] = (
    "Angela Merkel met Emmanuel Macron in Paris on Monday",
    "shares of Siemens fell 3 percent in Frankfurt trading",
    "the United Nations said aid had reached Khartoum",
    "Maria Garcia scored twice as Real Madrid beat Valencia",
    "police in Lagos arrested two men, Reuters reported",
    "Toyota will open a plant in Ohio employing 2,000 people",
    "the talks in Geneva ended without agreement",
    "John Smith, a spokesman for Barclays, declined to comment",
    "flights between Tokyo and Seoul were cancelled",
    "the European Commission fined Google in Brussels",
    "prices were steady in early trade",
    "Li Wei of the World Bank warned of slower growth in Asia",
    "thousands marched through Warsaw on Sunday",
    "NASA and Airbus signed a research deal in Toulouse",
)
NEWS_WORDS_MU, NEWS_WORDS_SIGMA, NEWS_MAX_WORDS = 4.25, 0.6, 600
QA_CONTEXT_WORDS_MU = 4.8  # median ~120 words, as SQuAD paragraphs
QUESTIONS: tuple[str, ...] = (
    "Where did Angela Merkel meet Emmanuel Macron?",
    "Which company will open a plant in Ohio?",
    "Who declined to comment on the report from the bank?",
    "How many people will the new plant employ?",
    "Where did thousands of people march on Sunday?",
    "Which organisation said that aid had reached Khartoum?",
    "Who warned of slower growth in Asia this year?",
)


def make_rng(user_index: int) -> random.Random:
    """A per-user generator: seeded from LOADTEST_SEED when set, from the OS otherwise."""
    seed = os.environ.get("LOADTEST_SEED")
    if seed is None or seed == "":
        return random.Random()
    # A string seed is hashed deterministically (unlike hash()), so runs repeat across processes.
    return random.Random(f"{seed}:{user_index}")


def word_count(rng: random.Random) -> int:
    n = round(rng.lognormvariate(WORDS_MU, WORDS_SIGMA))
    return min(MAX_WORDS, max(MIN_WORDS, n))


def make_text(rng: random.Random) -> str:
    """Fragments joined until the drawn length is reached, then cut there (mid-fragment is fine:
    real reviews are not made of whole canned phrases either)."""
    target = word_count(rng)
    words: list[str] = []
    while len(words) < target:
        fragment = rng.choice(FRAGMENTS)
        if not words or words[-1][-1] in ".!":
            fragment = fragment[0].upper() + fragment[1:]
        words.extend(fragment.split())
        words[-1] += rng.choice((".", ".", ",", "!", ";"))
    return " ".join(words[:target]).rstrip(",;")


def texts_per_request(rng: random.Random) -> int:
    if rng.random() < SINGLE_TEXT_SHARE:
        return 1
    return rng.randint(*MULTI_TEXTS_RANGE)


def make_paragraph(rng: random.Random, mu: float, cap: int) -> str:
    target = min(cap, max(MIN_WORDS, round(rng.lognormvariate(mu, NEWS_WORDS_SIGMA))))
    words: list[str] = []
    while len(words) < target:
        sentence = rng.choice(NEWS)
        words.extend((sentence[0].upper() + sentence[1:] + ".").split())
    return " ".join(words[:target])


def load_texts_file() -> tuple[str, ...]:
    """LOADTEST_TEXTS_FILE: real texts instead of generated ones (one per line; for a .tsv with
    a header, its first column, e.g. SST-2's `sentence`)."""
    path = os.environ.get("LOADTEST_TEXTS_FILE")
    if not path:
        return ()
    lines = [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines()]
    if path.endswith(".tsv"):
        lines = [line.split("\t")[0] for line in lines[1:]]
    texts = tuple(line.strip() for line in lines if line.strip())
    if not texts:
        raise SystemExit(f"LOADTEST_TEXTS_FILE={path} holds no texts")
    return texts


TEXTS_FILE = load_texts_file()


def make_texts(rng: random.Random) -> list[str]:
    """LOADTEST_TEXTS_PER_REQUEST fixes the count (e.g. 1); otherwise mostly one, sometimes a few."""
    fixed = os.environ.get("LOADTEST_TEXTS_PER_REQUEST")
    count = int(fixed) if fixed else texts_per_request(rng)
    if TEXTS_FILE:
        return [rng.choice(TEXTS_FILE) for _ in range(count)]
    return [make_text(rng) for _ in range(count)]


# --- endpoints --------------------------------------------------------------------------------

Payload = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """One API endpoint under test.

    `build` returns the JSON body; `check` returns why a 200 answer is wrong, or None if it is
    right. Requests are named by `path`, so each endpoint gets its own row in Locust's stats.
    """

    path: str
    weight: int
    build: Callable[[random.Random], Payload]
    check: Callable[[Payload, Any], str | None]


class TextSource:
    """What a task's load-test scenario draws its inputs from (one per request)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def count(self, most: int | None = None) -> int:
        """Inputs in one request: mostly one, sometimes a few (or 1..most)."""
        return texts_per_request(self.rng) if most is None else self.rng.randint(1, most)

    def texts(self) -> list[str]:
        return make_texts(self.rng)

    def text(self) -> str:
        return make_text(self.rng)

    def paragraph(self) -> str:
        """A news-style paragraph (median ~70 words, a tail up to 600)."""
        return make_paragraph(self.rng, NEWS_WORDS_MU, NEWS_MAX_WORDS)

    def context(self) -> str:
        """A SQuAD-sized paragraph (median ~120 words)."""
        return make_paragraph(self.rng, QA_CONTEXT_WORDS_MU, NEWS_MAX_WORDS)

    def question(self) -> str:
        return self.rng.choice(QUESTIONS)

    def candidates(self) -> list[str]:
        """A SQuAD-sized candidate list for /rerank: the sentences of a context (SQuAD dev: 5.1 a
        question on average, 1 to 25; drawn here as 1 + a geometric count, mean 5, at most 25)."""
        n = 1
        while n < 25 and self.rng.random() < 0.8:
            n += 1
        return [make_text(self.rng) for _ in range(n)]


def registry_endpoints() -> tuple[Endpoint, ...]:
    """One endpoint per route with a scenario, in the registry's order."""
    return tuple(
        Endpoint(path=route.path, weight=route.scenario.weight,
                 build=lambda rng, sc=route.scenario: sc.build(TextSource(rng)), check=route.scenario.check)
        for spec in tasks().values() for route in spec.routes if route.scenario is not None
    )


ALL_ENDPOINTS: tuple[Endpoint, ...] = registry_endpoints()


def selected_endpoints() -> tuple[Endpoint, ...]:
    """LOADTEST_ENDPOINTS=/classify,/embed limits a run to those paths (default: all)."""
    wanted = [p.strip() for p in os.environ.get("LOADTEST_ENDPOINTS", "").split(",") if p.strip()]
    unknown = sorted(set(wanted) - {e.path for e in ALL_ENDPOINTS})
    if unknown:
        raise SystemExit(f"LOADTEST_ENDPOINTS names unknown paths {unknown}; known: "
                         f"{', '.join(e.path for e in ALL_ENDPOINTS)}")
    return tuple(e for e in ALL_ENDPOINTS if not wanted or e.path in wanted)


ENDPOINTS = selected_endpoints()


def error_summary(response: Any) -> str:
    """The service's `error_type: error` when the body has them, else the start of the body."""
    try:
        body = response.json()
        return f"{body['error_type']}: {body['error']}"
    except Exception:
        return (response.text or "")[:200]


def call(user: BertServeUser, endpoint: Endpoint) -> None:
    payload = endpoint.build(user.rng)
    with user.client.post(endpoint.path, json=payload, name=endpoint.path,
                          catch_response=True) as response:
        if response.status_code == 0:
            # No HTTP answer at all (refused, reset, timeout): the cause is only in `error`.
            response.failure(f"connection error: {response.error}")
            return
        if response.status_code != 200:
            response.failure(f"HTTP {response.status_code}: {error_summary(response)}")
            return
        try:
            body = response.json()
        except ValueError:
            response.failure("200 with a body that is not JSON")
            return
        problem = endpoint.check(payload, body)
        if problem is None:
            response.success()
        else:
            response.failure(problem)


def make_task(endpoint: Endpoint) -> Callable[[BertServeUser], None]:
    def task(user: BertServeUser) -> None:
        call(user, endpoint)

    # Locust shows the task's name in its task table; one per endpoint reads better than "task".
    task.__name__ = f"post {endpoint.path}"
    return task


USER_RATE = float(os.environ.get("LOADTEST_USER_RATE") or 0)


def poisson_pacing(rate: float) -> Callable[..., float]:
    """Requests at `rate` per second per user on average, at exponentially spaced (Poisson)
    instants, as independent clients send them. A fixed interval would keep users that started
    together in step, and their requests would arrive in bursts of all users at once."""

    def wait(user: BertServeUser) -> float:
        now = time.monotonic()
        due = getattr(user, "next_due", now) + user.rng.expovariate(rate)
        user.next_due = max(due, now)  # a late response does not bring a burst of catch-up requests
        return user.next_due - now

    return wait


def make_wait_time() -> Callable[..., float]:
    """Closed loop by default; LOADTEST_USER_RATE=r paces each user at r requests/s (an offered
    load of users x r, as long as the service keeps up); LOADTEST_WAIT_MAX_S adds think time."""
    if USER_RATE > 0:
        return poisson_pacing(USER_RATE)
    wait_max = float(os.environ.get("LOADTEST_WAIT_MAX_S") or 0)
    return between(0, wait_max) if wait_max > 0 else constant(0)


_user_counter = itertools.count()

# Locust draws task choices and think times from the global generator; seeding it too keeps a
# seeded run's mix of endpoints repeatable as well as its texts.
if os.environ.get("LOADTEST_SEED"):
    random.seed(os.environ["LOADTEST_SEED"])


class BertServeUser(FastHttpUser):
    rng: random.Random
    next_due: float
    wait_time = make_wait_time()
    tasks = {make_task(endpoint): endpoint.weight for endpoint in ENDPOINTS}  # noqa: RUF012

    def on_start(self) -> None:
        self.rng = make_rng(next(_user_counter))
        if USER_RATE > 0:  # paced users start at random instants, not all in the first second
            gevent.sleep(self.rng.uniform(0, 1 / USER_RATE))



def write_final_csv(environment: Environment) -> None:
    """Rewrite PREFIX_stats.csv and PREFIX_failures.csv with the final numbers.

    Locust (2.47) writes them once a second and not again at shutdown, so without this they miss
    the last second and the requests in flight at the stop, and disagree with its own summary.
    Written aside and renamed over, so that Locust's still-open handles (flushed when it closes
    them, right after the quit event) land in the replaced file, not in ours.
    """
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return  # no --csv; or a worker, whose stats the master holds
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    tables = (("_stats.csv", writer.requests_csv), ("_failures.csv", writer.failures_csv))
    for suffix, write in tables:
        path = f"{prefix}{suffix}"
        with open(f"{path}.tmp", "w") as f:
            write(csv.writer(f))
        os.replace(f"{path}.tmp", path)


STATUS_FILE = os.environ.get("LOADTEST_STATUS_FILE")
_times_by_status: dict[int, list[float]] = {}


def record_status(response: Any = None, response_time: float = 0.0, **_kwargs: Any) -> None:
    status = int(getattr(response, "status_code", 0) or 0)
    _times_by_status.setdefault(status, []).append(response_time)


def write_status_file(path: str) -> None:
    """{status: {count, p50_ms, p95_ms, p99_ms}} of every request of the run."""
    import numpy as np

    table = {str(status): {"count": len(times),
                           **{f"p{q}_ms": round(float(np.percentile(times, q)), 1) for q in (50, 95, 99)}}
             for status, times in sorted(_times_by_status.items())}
    Path(path).write_text(json.dumps(table, indent=2) + "\n")


@events.init.add_listener
def on_init(environment: Environment, **_kwargs: Any) -> None:
    # The quit event carries only the exit code; it comes after the runner has stopped (so the
    # stats are final) and before Locust closes its CSV files.
    events.quit.add_listener(lambda **_: write_final_csv(environment))
    if STATUS_FILE and not isinstance(environment.runner, WorkerRunner):
        events.request.add_listener(record_status)
        events.quit.add_listener(lambda **_: write_status_file(STATUS_FILE))
