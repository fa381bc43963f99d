"""The variants one export publishes, what each needs to run, and the choice among them where the
model runs (the fastest that runs, measured at start on held-out inputs stored with the model).

An export builds fp32, an int8 build per instruction set and fp16 on a GPU, gates each, and
publishes those that pass in one store entry (`ModelCard.variants`). The machine that exports is
rarely the one that serves: the service decides, at start, on its own hardware.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

FP32, FP16 = "fp32", "fp16"
# int8 builds: `int8` has 7-bit weights and runs exactly everywhere (AVX2 without VNNI multiplies
# u8 x s8 pairs into saturating int16: onnxruntime's reduce_range for the same reason); `int8-vnni`
# has 8-bit weights, which need VNNI (x86) or arm64's dot-product instructions to be exact.
INT8, INT8_VNNI = "int8", "int8-vnni"
INT8_WEIGHT_MAX = {INT8: 63, INT8_VNNI: 127}
# x86 CPU flags one of which a variant needs (arm64 runs every int8 build exactly)
NEEDS_FLAGS: dict[str, tuple[str, ...]] = {INT8_VNNI: ("avx512_vnni", "avx_vnni")}
ISAS = ("auto", "avx2", "avx512", "vnni", "arm64")
# BERTSERVE_VARIANT=export: serve the variant the exporting machine chose (`model.onnx`), untimed
EXPORTED = "export"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_isa(override: str = "auto") -> str:
    """This CPU's int8 instruction set: vnni, avx512, avx2 or arm64 (`override`, other than auto,
    is taken as the answer: BERTSERVE_CPU_ISA, to serve as a smaller machine would)."""
    if override != "auto":
        if override not in ISAS:
            raise ValueError(f"unknown instruction set {override!r}; known: {', '.join(ISAS)}")
        return override
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = cpu_flags()
    if flags & set(NEEDS_FLAGS[INT8_VNNI]):
        return "vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def int8_for(isa: str) -> str:
    """The int8 build that is exact and fastest on `isa`."""
    return INT8_VNNI if isa in ("vnni", "arm64") else INT8


def why_not_here(name: str, info: dict[str, Any], isa: str, cuda: bool) -> str | None:
    """None when variant `name` runs (exactly) here; else the reason it does not."""
    if not info.get("passed", True):
        return "it failed the parity gate at export"
    if info.get("device") == "cuda" and not cuda:
        return "it needs a GPU (onnxruntime's CUDA provider), and this service has none"
    needs = NEEDS_FLAGS.get(name)
    if needs and isa not in ("vnni", "arm64"):
        return f"it needs {' or '.join(needs)} to compute 8-bit weights exactly, and this CPU ({isa}) has neither"
    return None


@dataclass
class Choice:
    """What the service chose among a model's variants, and why (shown at /info)."""

    served: str
    reason: str
    measured_ms: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def public(self) -> dict[str, Any]:
        return {"served": self.served, "chosen_by": self.reason, "measured_ms": self.measured_ms,
                "not_run": self.skipped, "seconds": round(self.seconds, 3)}


def time_one(predict: Callable[[list[Any]], Any], inputs: Sequence[Any], budget_s: float) -> float:
    """Median milliseconds of `predict` on one input at a time, cycling `inputs` for about
    `budget_s` (at least 3 calls, the first untimed: it warms the session up)."""
    predict([inputs[0]])
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    i = 0
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        predict([inputs[i % len(inputs)]])
        times.append((time.perf_counter() - start) * 1000)
        i += 1
    return statistics.median(times)


def pin_problem(variants: dict[str, dict[str, Any]], pinned: str, default: str | None, *, isa: str, cuda: bool,
                where: str = "this model") -> str | None:
    """Why BERTSERVE_VARIANT=`pinned` (`export`: `default`) cannot be served from `variants`; None
    when it can. Checked once at start (before workers) and again by `choose`."""
    name = default if pinned == EXPORTED else pinned
    if name not in variants:
        return (f"BERTSERVE_VARIANT={pinned}: {where} has no such variant (it does not have {name}; it has "
                f"{', '.join(variants)}); unset BERTSERVE_VARIANT to let the service choose, or export the model "
                "again to publish every variant")
    why = why_not_here(name, variants[name], isa, cuda)
    if why is None:
        return None
    runnable = [n for n, info in variants.items() if why_not_here(n, info, isa, cuda) is None]
    return (f"BERTSERVE_VARIANT={pinned} cannot be served for {where}: {why}; runnable here: "
            f"{', '.join(runnable) or 'none'} (unset BERTSERVE_VARIANT to let the service choose)")


def choose(variants: dict[str, dict[str, Any]], default: str | None, *, pinned: str | None, isa: str,
           cuda: bool, measure: Callable[[str, float], float], budget_s: float) -> Choice:
    """Which of a card's `variants` to serve: `pinned` (BERTSERVE_VARIANT; `export`: `default`, the
    exporting machine's choice) if it runs here; else
    the only one that runs; else the fastest by `measure(name, seconds)` (median ms), the
    measuring shared out of `budget_s`. Raises ValueError, saying why, when none can be served."""
    start = time.perf_counter()
    skipped = {name: why for name, info in variants.items() if (why := why_not_here(name, info, isa, cuda))}
    runnable = [name for name in variants if name not in skipped]
    if pinned:
        problem = pin_problem(variants, pinned, default, isa=isa, cuda=cuda)
        if problem:
            raise ValueError(problem)
        return Choice(str(default) if pinned == EXPORTED else pinned, "BERTSERVE_VARIANT", skipped=skipped)
    if not runnable:
        raise ValueError("none of its variants runs here: " + "; ".join(f"{n}: {w}" for n, w in skipped.items()))
    if len(runnable) == 1:
        return Choice(runnable[0], "the only variant that runs here", skipped=skipped,
                      seconds=time.perf_counter() - start)
    # the export machine's choice first: on a tie (equal medians) it stays
    runnable.sort(key=lambda n: n != default)
    share = budget_s / len(runnable)
    measured = {name: round(measure(name, share), 3) for name in runnable}
    fastest = min(runnable, key=lambda n: measured[n])
    return Choice(fastest, "fastest measured here", measured, skipped, time.perf_counter() - start)
