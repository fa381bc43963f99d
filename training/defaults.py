"""The learning rate and the number of epochs when the command line leaves them out, chosen from
the data and the base model.

5e-5 for 3 epochs suits tens of thousands of examples (SST-2: 67k rows, 2 epochs). On a few
hundred it is 27 optimizer steps: 300 SMS messages (31 spam) trained so gave a model that never
says spam (macro-F1 0.47). Small sets need more steps, and a small encoder (MiniLM: hidden 384)
takes a higher rate; a BERT-base-sized encoder keeps 5e-5 (higher rates make it unstable on small
sets, Mosbach et al. 2021) and gets the extra epochs only. Imbalance is handled by class weights
(`class_weights=auto`), not here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LEARNING_RATE = 5e-5
# up to this many training examples a run is "small": 3 epochs would be under ~190 steps of 32
SMALL_DATA = 2_000
SMALL_DATA_LEARNING_RATE = 1.5e-4  # for encoders up to SMALL_ENCODER wide
SMALL_ENCODER = 512  # hidden size: MiniLM-L6/L12 (384) and smaller
SMALL_DATA_STEPS = 150  # optimizer steps a small run aims at (early stopping may end it sooner)
SMALL_DATA_MAX_EPOCHS = 15


@dataclass(frozen=True)
class Schedule:
    learning_rate: float
    epochs: float
    why: str  # in words: logged at the start and kept in the card (training.schedule)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def large_data_epochs(n_examples: int) -> float:
    """3 epochs up to 20k examples, 2 up to 80k, 1 beyond: large sets converge in fewer passes."""
    return 3.0 if n_examples <= 20_000 else 2.0 if n_examples <= 80_000 else 1.0


def hidden_size(base_model: str) -> int | None:
    """The width of a local base model (config.json), None when unknown (a hub id)."""
    config_file = Path(base_model) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    for key in ("hidden_size", "dim", "d_model"):  # BERT-likes, DistilBERT, others
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def schedule(learning_rate: float | None, epochs: float | None, base_model: str, n_examples: int,
             examples_per_step: int, small_data: bool) -> Schedule:
    """What a run trains with: the given learning rate and epochs, and for those left out the
    defaults for this much data (`small_data`: the task takes the small-data schedule)."""
    if not small_data or n_examples > SMALL_DATA:
        return Schedule(learning_rate if learning_rate is not None else LEARNING_RATE,
                        epochs if epochs is not None else large_data_epochs(n_examples),
                        f"{n_examples} training examples: the standard schedule")
    width = hidden_size(base_model)
    small_encoder = width is not None and width <= SMALL_ENCODER
    steps_per_epoch = max(1, math.ceil(n_examples / examples_per_step))
    chosen_epochs = float(min(SMALL_DATA_MAX_EPOCHS, max(3, math.ceil(SMALL_DATA_STEPS / steps_per_epoch))))
    rate = SMALL_DATA_LEARNING_RATE if small_encoder else LEARNING_RATE
    why = (f"small data ({n_examples} training examples, {steps_per_epoch} steps per epoch): "
           f"{chosen_epochs:g} epochs to reach about {SMALL_DATA_STEPS} steps"
           + (f", learning rate {rate:g} for a small encoder (hidden size {width})" if small_encoder
              else f", learning rate {rate:g} (an encoder wider than {SMALL_ENCODER} or of unknown width "
                   "keeps the usual rate)"))
    given = [name for name, value in (("--learning-rate", learning_rate), ("--epochs", epochs)) if value is not None]
    if given:
        why += f"; {' and '.join(given)} as given"
    return Schedule(learning_rate if learning_rate is not None else rate,
                    epochs if epochs is not None else chosen_epochs, why)
