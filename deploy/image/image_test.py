"""`make image-test`: run the serving image built by `make image` and check it end to end.

Starts the image (port 3000 published on a free local port, nothing mounted), waits for /readyz, calls every
endpoint with a valid body and checks the shape of each answer, checks that every POST route of
the service's OpenAPI schema was called, that /info serves the models packaged into the image and
that /metrics has bertserve's metrics, lists the image's Python packages (no torch, no
transformers, no training code), then sends the container SIGTERM (`kill --signal TERM`, as an
orchestrator does), watches /readyz until it is gone, and requires exit status 0 within 30 s:
BentoML shuts down cleanly on SIGTERM and exits 0; 143 would mean the signal killed it unhandled,
137 that it was still running after 30 s and had to be killed.

Standard library and the project's task registry (each route's load-test scenario builds its body
and checks its answer). Prints a summary and writes build/image/image-test.json; exit status 1 if
any check failed.

    .venv/bin/python deploy/image/image_test.py [--variant cpu|gpu] [--image IMAGE] [--backend podman]

`--variant gpu` runs the `make image-gpu` image: without a GPU onnxruntime falls back to the CPU,
so every check above still applies, plus one that the CUDA libraries it would load are there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "image"
# Packages that belong to training and export only; the serving image must not have them.
FORBIDDEN = {"torch", "transformers", "optimum", "optimum-onnx", "accelerate", "datasets",
             "sentence-transformers", "safetensors"}
# Project directories that must not be in the image (bentofile.yaml excludes them).
ABSENT_DIRS = ("training", "export", "tests", "loadtests", "samples")
BENTO_SRC = "/home/bentoml/bento/src"
# Exit statuses accepted after SIGTERM: BentoML handles the signal and exits 0.
CLEAN_EXIT = (0,)
# Kubernetes' default grace period; the drain (5 s) and a quiet service's in-flight requests fit well within.
STOP_TIMEOUT_S = 30.0
TEXTS = ["What a lovely little cafe, the cake was superb.", "The battery died after an hour."]
NER_TEXT = "Angela Merkel met Emmanuel Macron in Paris on Monday."
QA_CONTEXT = "Hans Berg was born in Bergen in 1977. Today Hans Berg works for NASA as a pilot."


class CheckFailed(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- the answers' shapes -------------------------------------------------------------------

class FixedSource:
    """The inputs the task registry's load-test scenarios draw from, fixed: two short texts, a
    news sentence, a question on a short context."""

    def count(self, most: int | None = None) -> int:
        return 1

    def texts(self) -> list[str]:
        return list(TEXTS)

    def text(self) -> str:
        return TEXTS[0]

    def paragraph(self) -> str:
        return NER_TEXT

    def context(self) -> str:
        return QA_CONTEXT

    def question(self) -> str:
        return "Who does Hans Berg work for?"

    def candidates(self) -> list[str]:
        return [*QA_CONTEXT.split(". "), TEXTS[0]]


def post_checks() -> dict[str, tuple[dict, Callable[[dict], str]]]:
    """path -> (body, check) for every registered route with a scenario: the body its scenario
    builds from FixedSource, the check its scenario applies (the answer's schema and coherence)."""
    sys.path.insert(0, str(ROOT))
    from bertserve.registry import tasks

    checks: dict[str, tuple[dict, Callable[[dict], str]]] = {}
    for spec in tasks().values():
        for route in spec.routes:
            if route.scenario is None:
                continue
            body = route.scenario.build(FixedSource())

            def check(answer: dict, body: dict = body, scenario: Any = route.scenario) -> str:
                problem = scenario.check(body, answer)
                expect(problem is None, str(problem))
                return "ok"

            checks[route.path] = (body, check)
    # TEI's tokenizer routes (the service's own, not a task's)
    checks["/tei/tokenize"] = ({"inputs": ["a warm-up text"]}, _tokens)
    checks["/tei/decode"] = ({"ids": [[1, 2, 3]]}, _decoded)
    return checks


def _tokens(answer: Any) -> str:
    expect(isinstance(answer, list) and len(answer) == 1 and all("id" in t and "text" in t for t in answer[0]),
           f"not one list of tokens: {str(answer)[:200]}")
    return "ok"


def _decoded(answer: Any) -> str:
    expect(isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], str),
           f"not one decoded text: {str(answer)[:200]}")
    return "ok"


# --- plumbing ------------------------------------------------------------------------------

def http(base: str, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, bytes, float]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST",
                                     headers={"content-type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_default(variant: str) -> str:
    built = BUILD / f"{variant}.json"
    if built.is_file():
        return json.loads(built.read_text())["backend"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0:
            return "docker"
    return "podman"


def image_default(variant: str) -> str:
    built = BUILD / f"{variant}.json"
    if built.is_file():
        return json.loads(built.read_text())["image"]
    return "localhost/bertserve:latest" if variant == "cpu" else "localhost/bertserve-gpu:latest"


def packaged_models(variant: str) -> list[str] | None:
    """The model tags the last `make image` put into the Bento (from its generated bentofile)."""
    bentofile = BUILD / f"bentofile-{variant}.yaml"
    if not bentofile.is_file():
        return None
    tags, inside = [], False
    for line in bentofile.read_text().splitlines():  # no YAML parser needed for this one list
        if line.startswith("models:"):
            inside = True
        elif inside and line.startswith("- "):
            tags.append(line[2:].strip().strip("'\""))
        elif inside:
            break
    return tags


def cuda_libraries_resolve(run: Callable[..., subprocess.CompletedProcess], container: str) -> tuple[bool, str]:
    """onnxruntime's CUDA provider finds every library it needs in the image but the driver's
    libcuda.so.1, which the NVIDIA container toolkit mounts at run time."""
    code = ("import onnxruntime, pathlib; "
            "print(pathlib.Path(onnxruntime.__file__).parent / 'capi' / 'libonnxruntime_providers_cuda.so')")
    found = run("exec", container, "python", "-c", code)
    if found.returncode != 0:
        return False, f"no CUDA provider: {found.stderr.strip()[-300:]}"
    ldd = run("exec", container, "ldd", found.stdout.strip())
    missing = sorted({line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line})
    # cuDNN is opened at run time, not linked: load it the way onnxruntime will (LD_LIBRARY_PATH)
    code = "import ctypes, sys\nfor lib in sys.argv[1:]:\n    try: ctypes.CDLL(lib)\n    except OSError: print(lib)"
    unloadable = run("exec", container, "python", "-c", code, "libcudnn.so.9").stdout.split()
    missing += unloadable
    return missing == ["libcuda.so.1"], (f"unresolved: {', '.join(missing) or 'none'} (ldd of the CUDA provider, "
                                         "dlopen of libcudnn.so.9; libcuda.so.1 comes with the driver)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["cpu", "gpu"], default="cpu",
                        help="gpu: the `make image-gpu` image (without a GPU it answers on the CPU)")
    parser.add_argument("--image", default=None, help="default: the image `make image` built last")
    parser.add_argument("--backend", default=None, help="podman or docker; default: the one `make image` used")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--host-network", action="store_true",
                        help="run with --network host (serving on --port) instead of publishing port 3000")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="leave the container running (no stop checks)")
    args = parser.parse_args(argv)
    engine = args.backend or engine_default(args.variant)
    image = args.image or image_default(args.variant)
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    name = f"bertserve-image-test-{os.getpid()}"
    report: dict[str, Any] = {"image": image, "engine": engine, "port": port, "checks": {}}
    failures: list[str] = []

    def record(check: str, ok: bool, detail: str) -> None:
        report["checks"][check] = {"ok": ok, "detail": detail}
        print(f"  {'ok  ' if ok else 'FAIL'} {check}: {detail}", flush=True)
        if not ok:
            failures.append(check)

    def run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([engine, *command], capture_output=True, text=True, timeout=timeout)

    inspected = run("image", "inspect", "--format", "{{.Size}}", image)
    if inspected.returncode != 0:
        print(f"no image {image} ({engine}): run `make image` first\n{inspected.stderr.strip()}", file=sys.stderr)
        return 1
    report["image_size_mb"] = round(int(inspected.stdout.strip()) / 1e6)
    print(f"{image} ({engine}, {report['image_size_mb']} MB) on port {port}", flush=True)

    started = time.perf_counter()
    network = (["--network", "host", "-e", f"PORT={port}"] if args.host_network
               else ["-p", f"127.0.0.1:{port}:3000"])
    launched = run("run", "-d", "--name", name, *network, image)
    if launched.returncode != 0:
        print(f"{engine} run failed:\n{launched.stderr.strip()}", file=sys.stderr)
        return 1
    try:
        # ready
        ready_s = None
        while time.perf_counter() - started < args.ready_timeout:
            state = run("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            if state != "true":
                break
            with contextlib.suppress(OSError):
                if http(base, "/readyz", timeout=2)[0] == 200:
                    ready_s = time.perf_counter() - started
                    break
            time.sleep(0.25)
        report["ready_s"] = None if ready_s is None else round(ready_s, 2)
        if ready_s is None:
            record("readyz", False, f"not ready within {args.ready_timeout:g} s; logs:\n"
                   + run("logs", "--tail", "30", name).stdout + run("logs", "--tail", "30", name).stderr)
            return 1
        record("readyz", True, f"200 after {ready_s:.1f} s (from `{engine} run`)")

        # health, info, metrics
        status, _, _ = http(base, "/livez")
        record("GET /livez", status == 200, str(status))
        status, body, _ = http(base, "/info")
        info = json.loads(body) if status == 200 else {}
        served = {task: m["tag"] for task, m in info.get("models", {}).items()}
        report["providers"] = sorted({p for m in info.get("models", {}).values() for p in m.get("providers", [])[:1]})
        expected = packaged_models(args.variant)
        ok = status == 200 and len(served) == 4 and (expected is None or sorted(served.values()) == sorted(expected))
        record("GET /info", ok, f"{status}, serves {', '.join(f'{t}={tag}' for t, tag in sorted(served.items()))}"
               + ("" if expected is None else f" (packaged: {', '.join(expected)})")
               + f"; on {', '.join(report['providers'])}")

        # every POST route
        status, body, _ = http(base, "/openapi.json")
        schema = json.loads(body) if status == 200 else {"paths": {}}
        routes = sorted(p for p, ops in schema["paths"].items() if "post" in ops)
        POST_CHECKS = post_checks()
        missing = sorted(set(routes) - set(POST_CHECKS))
        record("POST routes covered", status == 200 and not missing,
               f"{len(routes)} in /openapi.json" + (f"; not checked here: {missing}" if missing else ""))
        report["endpoints"] = {}
        for path, (payload, check) in POST_CHECKS.items():
            status, body, seconds = http(base, path, payload)
            try:
                expect(status == 200, f"status {status}: {body[:300]!r}")
                detail = check(json.loads(body))
                ok = True
            except (CheckFailed, KeyError, TypeError, ValueError) as exc:
                detail, ok = f"{type(exc).__name__}: {exc}", False
            report["endpoints"][path] = {"status": status, "ms": round(seconds * 1000, 1), "ok": ok}
            record(f"POST {path}", ok, f"{status} in {seconds * 1000:.0f} ms: {detail}")

        status, body, _ = http(base, "/metrics")
        names = sorted({line.split("{")[0].split(" ")[0] for line in body.decode().splitlines()
                        if line.startswith("bertserve_")})
        record("GET /metrics", status == 200 and bool(names), f"{status}, {len(names)} bertserve_ series "
               f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")

        # what is installed
        listed = run("exec", name, "uv", "pip", "list", "--format", "json")
        if listed.returncode == 0:
            packages = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}
        else:  # no uv: read the metadata directly
            code = ("import importlib.metadata as m, json; "
                    "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))")
            packages = json.loads(run("exec", name, "python", "-c", code).stdout)
        present = sorted(FORBIDDEN & {p.replace("_", "-") for p in packages})
        report["packages"] = packages
        ort = next((f"{n} {packages[n]}" for n in ("onnxruntime", "onnxruntime-gpu") if n in packages), "no onnxruntime")
        record("pip list", bool(packages) and not present,
               f"{len(packages)} packages; {ort}, bentoml {packages.get('bentoml')}; "
               + (f"FORBIDDEN: {present}" if present else f"none of {', '.join(sorted(FORBIDDEN))}"))
        for module in ("torch", "transformers"):
            imported = run("exec", name, "python", "-c", f"import {module}")
            record(f"import {module}", imported.returncode != 0 and "ModuleNotFoundError" in imported.stderr,
                   "ModuleNotFoundError" if imported.returncode else "imported!")
        probe = "; ".join(f"test ! -e {BENTO_SRC}/{d}" for d in ABSENT_DIRS)
        absent = run("exec", name, "sh", "-c", probe)
        listing = run("exec", name, "ls", BENTO_SRC).stdout.split()
        record("no training code", absent.returncode == 0, f"{BENTO_SRC}: {' '.join(listing)}")
        if args.variant == "gpu":
            record("CUDA libraries", *cuda_libraries_resolve(run, name))
        if args.keep:
            print(f"left running: {name} on {base}")
            return 1 if failures else 0

        # SIGTERM: what an orchestrator sends; /readyz is watched until the container is gone
        stop_started = time.perf_counter()
        run("kill", "--signal", "TERM", name)
        readyz: list[str] = []
        while time.perf_counter() - stop_started < STOP_TIMEOUT_S:
            if run("inspect", "--format", "{{.State.Running}}", name).stdout.strip() != "true":
                break
            try:
                status = str(http(base, "/readyz", timeout=1)[0])
            except OSError:
                status = "refused"
            if not readyz or readyz[-1] != status:
                readyz.append(status)
            time.sleep(0.2)
        else:
            run("kill", "--signal", "KILL", name)
        stop_s = time.perf_counter() - stop_started
        run("wait", name, timeout=30)
        code = run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        report["sigterm"] = {"exit_code": code, "seconds": round(stop_s, 2), "readyz": readyz}
        record("SIGTERM", code.isdigit() and int(code) in CLEAN_EXIT and stop_s < STOP_TIMEOUT_S,
               f"exit {code} after {stop_s:.1f} s (accepted: {CLEAN_EXIT}, within {STOP_TIMEOUT_S:g} s); "
               f"/readyz meanwhile: {' -> '.join(readyz) or 'not polled'}")
        logs = run("logs", "--tail", "5", name)
        report["last_logs"] = (logs.stdout + logs.stderr).strip().splitlines()[-5:]
    finally:
        if not args.keep:
            run("rm", "-f", name)
        BUILD.mkdir(parents=True, exist_ok=True)
        (BUILD / "image-test.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nsummary: {image} {report['image_size_mb']} MB, ready in {report['ready_s']} s, "
          + ", ".join(f"{p} {e['status']}" for p, e in report["endpoints"].items())
          + f", SIGTERM exit {report['sigterm']['exit_code']} in {report['sigterm']['seconds']} s")
    print("FAILED: " + ", ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
