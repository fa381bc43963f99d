"""Running a trained (PyTorch) model through the same pipeline the service uses.

`TorchBackend` has the two members of `bertserve.runtime.Backend`, so tokenization, batching and
post-processing are the service's own code; only the forward pass differs.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertserve.artifact import ONNX_FILE, TOKENIZER_FILE, ModelCard, read_card, verify_files
from bertserve.data import Columns, load_task_examples
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


class SentenceTorchBackend:
    """A sentence-transformers model (encoder + pooling): its pooled, unnormalized output."""

    def __init__(self, model_dir: str | Path):
        from sentence_transformers import SentenceTransformer

        self.input_names = ["input_ids", "attention_mask"]
        self.device = torch_device()
        self.model = SentenceTransformer(str(model_dir), device=self.device, trust_remote_code=False,
                                         model_kwargs={"use_safetensors": True}).eval()

    @torch.inference_mode()
    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.model({k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()})
        return out["sentence_embedding"].float().cpu().numpy()


def torch_pipeline(model_dir: str | Path, card: ModelCard | None = None) -> Pipeline:
    model_dir = Path(model_dir)
    card = card or read_card(model_dir)
    if not (model_dir / TOKENIZER_FILE).is_file():
        raise ArtifactError(f"{model_dir} has no {TOKENIZER_FILE} (a fast tokenizer is required)")
    encoder = TextEncoder(model_dir / TOKENIZER_FILE, card.max_length)
    if card.task == "similarity":
        return Pipeline(card, encoder, SentenceTorchBackend(model_dir))
    spec = get_task(card.task)
    return Pipeline(card, encoder, TorchBackend(model_dir, spec.auto_model, spec.output_name))


def load_pipeline(ref: str) -> Pipeline:
    """A trained directory (PyTorch), an exported artifact directory, or a BentoML store tag."""
    path = Path(ref)
    if not path.exists():
        from bertserve.store import resolve

        if ":" not in ref and "/" in ref:
            raise ArtifactError(f"{ref}: no such directory")
        _, path, _ = resolve(None, ref)  # type: ignore[misc]  # with a tag it returns or raises
    card = read_card(path)
    if (path / ONNX_FILE).is_file():
        verify_files(path, card)
        return Pipeline.from_artifact(path, card)
    return torch_pipeline(path, card)


def evaluate(ref: str, data: str, columns: Columns, batch_size: int = 64, threshold: float | None = None,
             limit: int | None = None, task: str | None = None) -> dict[str, Any]:
    """Score a model on labeled data: a trained directory or a published artifact through the
    serving pipeline, or a running service (`ref` is its URL) through its HTTP endpoint."""
    if ref.startswith(("http://", "https://")):
        from bertserve.client import ServiceClient

        client = ServiceClient(ref)
        tag, card = client.card(task or ("similarity" if columns.text_pair else "classification"))
        examples = load_task_examples(card.task, data, columns)[: limit or None]
        texts, gold = get_task(card.task).split_examples(examples)
        results = client.predict(card.task, texts, batch_size=batch_size)
        ref = f"{ref} ({tag})"
    else:
        pipeline = load_pipeline(ref)
        card = pipeline.card
        if threshold is not None:
            card.thresholds = dict.fromkeys(card.labels, threshold)
        examples = load_task_examples(card.task, data, columns)[: limit or None]
        texts, gold = pipeline.spec.split_examples(examples)
        results = pipeline.predict(texts, batch_size=batch_size, progress=True)
    metrics = get_task(card.task).score(results, gold, card)
    log.info("%s on %s (%d examples): %s", ref, data, len(examples), json.dumps(metrics))
    return {"model": ref, "variant": card.variant or "pytorch", "data": data, "examples": len(examples),
            "metrics": metrics}
