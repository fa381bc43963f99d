"""Training data for tasks that read inputs in overlapping windows (NER, QA).

The windows come from the service's own `TextEncoder` over the model's Rust tokenizer, so the
model trains on exactly what it will be served; predictions map back to their inputs by position.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bertserve.runtime import Encoded, Windows

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(model: Any) -> list[str]:
    accepted = inspect.signature(model.forward).parameters
    return [name for name in INPUTS if name in accepted]


class WindowedData:
    """The windows of some inputs flattened into features, plus per-window label columns."""

    def __init__(self, sources: Sequence[Any], windows: list[list[Encoded]], labels: list[dict[str, list[Any]]]):
        self.sources = list(sources)
        self.windows = windows
        self.columns: dict[str, list[Any]] = {name: [] for name in (*INPUTS, "length")}
        for items, per_window in zip(windows, labels, strict=True):
            for item in items:
                enc = item.encoding
                self.columns["input_ids"].append(enc.ids)
                self.columns["attention_mask"].append([1] * len(enc.ids))
                self.columns["token_type_ids"].append(enc.type_ids)
                self.columns["length"].append(len(enc.ids))
            for name, values in per_window.items():
                self.columns.setdefault(name, []).extend(values)

    def __len__(self) -> int:
        return len(self.columns["input_ids"])

    def dataset(self, input_names: Sequence[str]) -> Any:
        from datasets import Dataset

        drop = set(INPUTS) - set(input_names)
        return Dataset.from_dict({k: v for k, v in self.columns.items() if k not in drop})

    def outputs(self, predictions: Any) -> list[Windows]:
        """Trainer predictions (padded rows in window order; several outputs stacked on a last
        axis, as the serving backends do) back to one Windows per input."""
        if isinstance(predictions, tuple | list):
            predictions = np.stack(predictions, axis=-1)
        out, at = [], 0
        for source, items in zip(self.sources, self.windows, strict=True):
            rows = [predictions[at + k][: item.n_tokens] for k, item in enumerate(items)]
            out.append(Windows(source, items, rows))
            at += len(items)
        return out


def fit_windows(cfg: Any, spec: Any, card: Any, model: Any, tokenizer: Any, train_f: WindowedData,
                val_f: WindowedData, val_gold: Sequence[Any], collator: Any) -> tuple[Any, Callable[[Any], dict]]:
    """`fit` on windowed features, judged on validation by the task's own post-processing and score
    over whole inputs. Returns the best model's validation predictions and that metric function."""
    from training.trainer import fit

    input_names = model_inputs(model)
    val_ds = val_f.dataset(input_names)

    def compute_metrics(pred: Any) -> dict[str, float]:
        return spec.score(spec.postprocess(val_f.outputs(pred.predictions), card), val_gold, card)

    trainer, info = fit(cfg, model, tokenizer, train_f.dataset(input_names), val_ds, collator=collator,
                        compute_metrics=compute_metrics, metric=card.primary_metric)
    card.training.update(info)
    return trainer.predict(val_ds), compute_metrics
