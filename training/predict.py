"""Running a trained (PyTorch) model through the same pipeline the service uses.

`TorchBackend` has the two members of `bertserve.runtime.Backend`, so tokenization, batching and
post-processing are the service's own code; only the forward pass differs.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertserve.artifact import TOKENIZER_FILE, ModelCard, read_card
from bertserve.data import Columns
from bertserve.errors import ArtifactError
from bertserve.registry import get_task
from bertserve.runtime import Pipeline, TextEncoder
from training.common import load_model

log = logging.getLogger(__name__)


def torch_device() -> str:
    """The reference (PyTorch) forward pass runs on a GPU when there is one, in fp32."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchBackend:
    def __init__(self, model_dir: str | Path, auto_model: str, output_name: str | tuple[str, ...] | None = None):
        self.device = torch_device()
        self.providers = [f"torch:{self.device}"]
        self.model = load_model(auto_model, str(model_dir)).eval().to(self.device)
        accepted = inspect.signature(self.model.forward).parameters
        self.input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
        self.output_names = [output_name] if isinstance(output_name, str) else list(output_name or ["logits"])

    @torch.inference_mode()
    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The same outputs as the ONNX backend, stacked the same way."""
        out = self.model(**{k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()})
        arrays = [getattr(out, name).float().cpu().numpy() for name in self.output_names]
        return arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)


def hf_pipeline(pipeline_task: str, model_dir: str | Path, **options: Any) -> Any:
    """A `transformers.pipeline` on the model, PyTorch fp32, on the reference device: what a user
    would run instead of bertserve (the bench's baseline)."""
    from transformers import pipeline

    device = 0 if torch_device() == "cuda" else -1
    return pipeline(pipeline_task, model=str(model_dir), device=device, dtype=torch.float32, **options)


def torch_pipeline(model_dir: str | Path, card: ModelCard | None = None) -> Pipeline:
    """A trained directory on PyTorch, through the serving pipeline: the task's own reference
    backend (`reference_backend` in its training module) or the auto-model's forward pass."""
    model_dir = Path(model_dir)
    card = card or read_card(model_dir)
    if not (model_dir / TOKENIZER_FILE).is_file():
        raise ArtifactError(f"{model_dir} has no {TOKENIZER_FILE} (a fast tokenizer is required)")
    encoder = TextEncoder(model_dir / TOKENIZER_FILE, card.max_length)
    spec = get_task(card.task)
    make = getattr(spec.training_module(), "reference_backend", None)
    backend = make(model_dir, card) if make else TorchBackend(model_dir, spec.auto_model, spec.output_name)
    return Pipeline(card, encoder, backend)


def evaluate(ref: str, data: str, columns: Columns, **options: Any) -> dict[str, Any]:
    """`bertserve.evaluate.evaluate`, able to score trained (PyTorch) directories too."""
    from bertserve.evaluate import evaluate as evaluate_any

    return evaluate_any(ref, data, columns, load_trained=torch_pipeline, **options)
