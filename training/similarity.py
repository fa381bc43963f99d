"""Fine-tuning a bi-encoder for sentence similarity and embeddings (sentence-transformers).

The model is the encoder plus the base model's own pooling (its sentence-transformers modules:
mean for the default encoder, CLS for BGE-style models; mean pooling for a plain encoder);
normalization is left to the shared post-processing so that raw vectors stay available. Scored pairs train with
CoSENT, unscored pairs and triplets with multiple-negatives ranking loss (in-batch negatives).
`--epochs 0` packages the base encoder as it is, scored on the validation data.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bertserve.artifact import ModelCard
from bertserve.errors import DataError
from bertserve.registry import get_task
from bertserve.tasks.similarity import PAIRS, SCORED
from training import dist
from training.common import (
    held_out_info,
    new_card,
    read_examples,
    save_outputs,
    split_validation,
    warn_overlap,
)
from training.config import TrainConfig
from training.trainer import clean_checkpoints, fit

log = logging.getLogger(__name__)
SPEC = get_task("similarity")


def build_model(base_model: str, max_length: int) -> Any:
    """The base model as sentence-transformers reads it: a sentence-transformers model keeps its
    own pooling (modules.json: CLS for BGE-style models, mean for the default encoder), a plain
    encoder gets mean pooling; a final Normalize module is dropped (the service normalizes, so raw
    vectors stay available). Weights from safetensors, no remote code."""
    from sentence_transformers import SentenceTransformer, models

    kwargs = {"use_safetensors": True, "trust_remote_code": False}
    if (Path(base_model) / "modules.json").is_file():
        loaded = SentenceTransformer(base_model, device="cpu", trust_remote_code=False, model_kwargs=kwargs)
        model = SentenceTransformer(modules=[m for m in loaded if not isinstance(m, models.Normalize)],
                                    device="cpu")
        model.max_seq_length = max_length
        log.info("pooling from the base model's sentence-transformers modules: %s", pooling_mode(model))
        return model
    transformer = models.Transformer(base_model, max_seq_length=max_length, model_kwargs=kwargs)
    pooling_module = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    log.info("%s has no sentence-transformers modules: mean pooling", base_model)
    return SentenceTransformer(modules=[transformer, pooling_module], device="cpu")


def pooling_mode(model: Any) -> str:
    """How the model pools token vectors into one ("mean", "cls", "max", "lasttoken", ...); "none"
    for a model whose modules have no Pooling (its last module pools in its own way)."""
    from sentence_transformers import models

    found = [m for m in model if isinstance(m, models.Pooling)]
    if not found:
        return "none"
    mode = found[0].pooling_mode  # several modes concatenate their vectors
    return mode if isinstance(mode, str) else "+".join(mode)


def make_evaluator(examples: list[dict[str, Any]], card: ModelCard, batch_size: int) -> Any:
    """Validation through the task's own `score`, so training selects on what export gates on."""
    from sentence_transformers.evaluation import SentenceEvaluator

    texts, gold = SPEC.split_examples(examples)

    class Evaluator(SentenceEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.name = "validation"
            self.primary_metric = card.primary_metric

        def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]:
            vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
            metrics = SPEC.score(SPEC.postprocess(vectors, card), gold, card)
            return self.prefix_name_to_metrics(metrics, self.name)

    return Evaluator()


def check_pairs(cfg: TrainConfig, problem_type: str, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> None:
    """Refuse pairs nothing can be learned or measured from, before any model is loaded."""
    if problem_type == SCORED and any(ex["score"] is None for ex in val):
        raise DataError("scored training pairs need scored validation pairs")
    if problem_type == SCORED:
        for name, examples in (("training", train), ("validation", val)):
            scores = {ex["score"] for ex in examples}
            if len(scores) < 2 and (cfg.epochs != 0 or name == "validation"):
                raise DataError(f"every {name} pair has the score {next(iter(scores)):g}: similarity needs "
                                "pairs of different scores (is --label-column the score?)")
    elif len(train) < 2 and cfg.epochs != 0:
        raise DataError(f"{cfg.train}: one training pair; multiple-negatives ranking learns from the other "
                        "pairs of a batch: add pairs")


def train(cfg: TrainConfig) -> ModelCard:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.training_args import BatchSamplers

    train_ex, train_info = read_examples(cfg, cfg.train)
    scored = [ex["score"] is not None for ex in train_ex]
    if any(scored) and not all(scored):
        raise DataError(f"{cfg.train}: some pairs have a score and some do not; use one kind per file")
    problem_type = SCORED if all(scored) else PAIRS
    if cfg.validation:
        val_ex, val_info = read_examples(cfg, cfg.validation)
    else:
        train_ex, val_ex = split_validation(train_ex, cfg, None)
        val_info = held_out_info(cfg)
    check_pairs(cfg, problem_type, train_ex, val_ex)
    warn_overlap(train_ex, val_ex, field="text_a")
    card = new_card(cfg, problem_type, [], len(train_ex), len(val_ex), train_info, val_info)
    model = build_model(cfg.base_model, cfg.max_length)
    card.training["pooling"] = pooling_mode(model)  # TEI's /info reports it
    evaluator = make_evaluator(val_ex, card, batch_size=64)
    log.info("%d training / %d validation pairs (%s)", len(train_ex), len(val_ex), problem_type)

    if cfg.epochs == 0:  # package the encoder as it is
        started = time.monotonic()
        card.training.update({"duration_s": 0.0, "epochs_completed": 0, "fine_tuned": False})
    else:
        if problem_type == SCORED:
            columns = {"text_a": [e["text_a"] for e in train_ex], "text_b": [e["text_b"] for e in train_ex],
                       "score": [e["score"] for e in train_ex]}
            loss = losses.CoSENTLoss(model)
        else:
            columns = {"anchor": [e["text_a"] for e in train_ex], "positive": [e["text_b"] for e in train_ex]}
            if all("negative" in e for e in train_ex):
                columns["negative"] = [e["negative"] for e in train_ex]
            loss = losses.MultipleNegativesRankingLoss(model)
        started = time.monotonic()
        _, info = fit(
            cfg, model, None, Dataset.from_dict(columns), None,
            metric=f"validation_{card.primary_metric}",
            trainer_cls=SentenceTransformerTrainer,
            args_cls=SentenceTransformerTrainingArguments,
            args_overrides={"group_by_length": False,
                            "batch_sampler": BatchSamplers.NO_DUPLICATES if problem_type == PAIRS
                            else BatchSamplers.BATCH_SAMPLER},
            trainer_kwargs={"loss": loss, "evaluator": evaluator},
        )
        card.training.update(info)
        card.training["fine_tuned"] = True
    if cfg.epochs == 0 and dist.is_main():
        model.save(cfg.output, safe_serialization=True)
    metrics = evaluator(model)
    card.metrics = {k.removeprefix("validation_"): float(v) for k, v in metrics.items()}
    card.training.setdefault("duration_s", round(time.monotonic() - started, 1))
    save_outputs(cfg, card, model.tokenizer, val_ex)
    clean_checkpoints(cfg)
    return card


class SentenceTorchBackend:
    """A sentence-transformers model (encoder + pooling): its pooled, unnormalized output."""

    def __init__(self, model_dir: Any):
        import torch
        from sentence_transformers import SentenceTransformer

        from training.predict import torch_device

        self.torch = torch
        self.input_names = ["input_ids", "attention_mask"]
        self.device = torch_device()
        self.providers = [f"torch:{self.device}"]
        self.model = SentenceTransformer(str(model_dir), device=self.device, trust_remote_code=False,
                                         model_kwargs={"use_safetensors": True}).eval()

    def logits(self, feeds: dict[str, Any]) -> Any:
        torch = self.torch
        with torch.inference_mode():
            out = self.model({k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()})
        return out["sentence_embedding"].float().cpu().numpy()


def reference_backend(model_dir: Any, card: ModelCard) -> SentenceTorchBackend:
    """The parity gate's reference: the sentence-transformers model, pooling included."""
    return SentenceTorchBackend(model_dir)


def baseline(model_dir: Any, card: ModelCard, batch_size: int) -> Any:
    """The bench's baseline: sentence-transformers' `encode`."""
    from sentence_transformers import SentenceTransformer

    from training.predict import torch_device

    st = SentenceTransformer(str(model_dir), device=torch_device(), model_kwargs={"use_safetensors": True})
    return lambda texts: st.encode(list(texts), batch_size=batch_size)


def scratch_model(base: str, out: Any, max_length: int) -> ModelCard:
    """The bench's model: the sentence encoder as it is (its pooling is its head)."""
    import shutil

    shutil.copytree(base, out, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.h5", "*.msgpack", "onnx"))
    return ModelCard(task=SPEC.name, max_length=max_length, base_model=base)
