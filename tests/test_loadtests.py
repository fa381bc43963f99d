"""The Locust scenarios build requests the service accepts and check its answers correctly.

Locust monkey-patches the standard library (gevent) when imported, so the locustfile runs in
subprocesses here: one builds a payload per endpoint, the other checks the service's answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD = """
import json, random, sys
from loadtests import locustfile as L
rng = random.Random(0)
print(json.dumps({e.path: e.build(rng) for e in L.ALL_ENDPOINTS}))
"""

CHECK = """
import json, sys
from loadtests import locustfile as L
cases = json.load(sys.stdin)
by_path = {e.path: e for e in L.ALL_ENDPOINTS}
print(json.dumps({path: by_path[path].check(c["payload"], c["body"]) for path, c in cases.items()}))
"""


def run(code: str, stdin: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, text=True, cwd=ROOT,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_scenario_is_accepted_and_checked(service_client, service_instance):
    from bertserve.registry import tasks

    payloads = run(BUILD)
    # every route with a scenario, of every task the in-process service serves
    served = {m.task for m in service_instance.served.by_name.values()}
    expected = {r.path for spec in tasks().values() if spec.name in served for r in spec.routes if r.scenario}
    assert expected >= {"/classify", "/embed", "/similarity", "/ner", "/qa", "/v1/embeddings"}
    payloads = {path: payload for path, payload in payloads.items() if path in expected}
    assert set(payloads) == expected
    for item in payloads["/qa"]["items"]:  # the tiny test model's 32-token window takes short questions
        item["question"] = "where did bob go"
    payloads["/hf/question-answering"]["inputs"]["question"] = "where did bob go"
    cases = {}
    for path, payload in payloads.items():
        response = service_client.post(path, json=payload)
        assert response.status_code == 200, (path, response.text)
        cases[path] = {"payload": payload, "body": response.json()}
    assert run(CHECK, json.dumps(cases)) == dict.fromkeys(payloads)
    # and a wrong answer is caught
    broken = {path: {"payload": c["payload"], "body": {"model": "x", "results": [], "data": []}}
              for path, c in cases.items()}
    assert all(problem for problem in run(CHECK, json.dumps(broken)).values())
