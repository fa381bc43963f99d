"""What one more forward pass costs, in tokens' worth, for a published model on this machine.

The batcher cuts a batch into length-sorted sub-batches where the padding saved is worth another
pass (`bertserve.runtime.plan_sub_batches`); this measures that worth: the CPU time of a pass of
one text and of two texts of the same length L (the process's CPU, every onnxruntime thread
included; best of 5), for several L. A pass of n texts costs about `call + n x L x per_token`, so
`call = 2 x one - two`, and `call / per_token` is the pass's cost in tokens. Compare it with
`CALL_COST_ONE_THREAD` (one thread) and `CALL_COST_TOKENS` (several, where the threads' hand-off
also costs wall time, which this does not count).

    python loadtests/call_cost.py [--model TAG] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SENTENCE = "the movie was a rather good one and i liked it a lot but not the end"


def cpu_ms(pipe: Any, items: list[Any], reps: int) -> float:
    pipe.forward(items)
    best = float("inf")
    for _ in range(5):
        c0 = time.process_time()
        for _ in range(reps):
            pipe.forward(items)
        best = min(best, (time.process_time() - c0) / reps)
    return 1000 * best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="classification")
    p.add_argument("--model", help="store tag (default: the task's latest published)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads (the service's workers: 1)")
    args = p.parse_args(argv)

    from bertserve.runtime import CALL_COST_ONE_THREAD, CALL_COST_TOKENS, Pipeline
    from bertserve.store import resolve
    from export.bench import machine

    found = resolve(args.task, args.model)
    if found is None:
        raise SystemExit(f"no {args.task} model is published: `bertserve quickstart` or pass --model")
    tag, path, card = found
    pipe = Pipeline.from_artifact(path, card, threads=args.threads, spinning=False)
    print(f"{tag} ({card.variant}), {args.threads} thread(s); {machine()['cpu']}")
    calls = []
    for length in (8, 16, 24, 32, 48, 64):
        [[item]] = pipe.featurize([" ".join((SENTENCE.split() * 10)[: length - 2])])
        reps = max(20, 1600 // length)
        one, two = cpu_ms(pipe, [item], reps), cpu_ms(pipe, [item, item], reps)
        per_token = (two - one) / item.n_tokens
        call = 2 * one - two
        calls.append(call / per_token)
        print(f"{item.n_tokens:3d} tokens: one text {one:.3f} ms, two {two:.3f} ms; a pass costs {call:.3f} ms "
              f"= {call / per_token:.1f} tokens ({1000 * per_token:.1f} us a token)")
    calls.sort()
    print(f"median: {calls[len(calls) // 2]:.1f} tokens a pass (the plan counts {CALL_COST_ONE_THREAD} on one "
          f"CPU thread, {CALL_COST_TOKENS} otherwise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
