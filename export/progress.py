"""One progress display across the stages of `bertserve fit`: where the minutes go.

A line when a stage or a step within it begins; the training's optimizer steps updated in place on
a terminal (elsewhere a line every tenth of the run and at each evaluation); the wall time of every
stage and step, kept for the summary. The libraries' own progress bars go to the log file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO


def duration(seconds: float) -> str:
    """3.2s, 41s, 4m12s, 1h03m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 1:
        return f"{secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    def __init__(self, stream: TextIO, stages: Sequence[str], tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream, self.stages, self.clock = stream, list(stages), clock
        self.tty = stream.isatty() if tty is None else tty
        self.current: str | None = None
        self.started = self.clock()
        self.stage_started = self.step_started = self.started
        self.step_name: str | None = None
        self.times: dict[str, float] = {}  # stage -> seconds
        self.steps: dict[str, list[tuple[str, float]]] = {}  # stage -> [(step, seconds)]
        self._in_place = False  # a training line is on screen without its newline
        self._shown_tenth = -1
        self._last_eval: str = ""

    def _prefix(self) -> str:
        stage = self.current or ""
        number = self.stages.index(stage) + 1 if stage in self.stages else 0
        return f"[fit {number}/{len(self.stages)} {stage}]"

    def _line(self, text: str, in_place: bool = False) -> None:
        if self._in_place and not in_place:
            self.stream.write("\n")
        if in_place and self.tty:
            self.stream.write(f"\r{self._prefix()} {text}\x1b[K")
            self._in_place = True
        else:
            self.stream.write(f"{self._prefix()} {text}\n")
            self._in_place = False
        self.stream.flush()

    def _end_step(self) -> None:
        if self.current is not None and self.step_name is not None:
            self.steps.setdefault(self.current, []).append((self.step_name, self.clock() - self.step_started))
        self.step_name = None

    def stage(self, name: str, what: str = "") -> None:
        """Begin stage `name` (ending the one before)."""
        self.end_stage()
        self.current, self.stage_started = name, self.clock()
        self._shown_tenth, self._last_eval = -1, ""
        if what:
            self._line(what)

    def step(self, what: str) -> None:
        """A step within the current stage begins."""
        self._end_step()
        self.step_name, self.step_started = what.split(":", 1)[0], self.clock()
        self._line(what)

    def end_stage(self, note: str = "") -> float:
        """End the current stage; returns its wall time."""
        if self.current is None:
            return 0.0
        self._end_step()
        seconds = self.clock() - self.stage_started
        self.times[self.current] = self.times.get(self.current, 0.0) + seconds
        self._line(f"done in {duration(seconds)}" + (f": {note}" if note else ""))
        self.current = None
        return seconds

    def training(self, step: int, total: int, metrics: dict[str, Any]) -> None:
        """The trainer's report after a step or an evaluation."""
        if metrics:
            shown = {k.removeprefix("eval_"): v for k, v in metrics.items()
                     if k.startswith("eval_") and isinstance(v, float) and "/" not in k
                     and not k.endswith(("_runtime", "_per_second"))}
            self._last_eval = ", ".join(f"{k} {v:.3f}" for k, v in list(shown.items())[:3])
        elapsed = self.clock() - self.stage_started
        left = f", ~{duration(elapsed / step * (total - step))} left" if 0 < step < total else ""
        text = f"step {step}/{total} ({100 * step // max(total, 1)}%), {duration(elapsed)}{left}"
        if self._last_eval:
            text += f"; validation {self._last_eval}"
        tenth = 10 * step // max(total, 1)
        if self.tty:
            self._line(text, in_place=True)
        elif metrics or tenth > self._shown_tenth:
            self._shown_tenth = tenth
            self._line(text)

    def total(self) -> float:
        return self.clock() - self.started

    def summary(self) -> dict[str, Any]:
        """Wall time per stage and per step, in seconds."""
        return {"total_s": round(self.total(), 1),
                "stages_s": {k: round(v, 1) for k, v in self.times.items()},
                "steps_s": {stage: {name: round(s, 1) for name, s in steps} for stage, steps in self.steps.items()}}
