"""The one artifact format: a model directory plus `bertserve.json`, the card that travels with it.

The same card describes a training output (PyTorch weights in safetensors) and a published ONNX
artifact (then it also holds the variant, the parity report and the file checksums). Anyone can
read it; the service serves it at `/info`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertserve import __version__
from bertserve.errors import ArtifactError

CARD_FILE = "bertserve.json"
FORMAT = "bertserve/1"
ONNX_FILE = "model.onnx"
# the fp32 variant stored beside a quantized one: shadow parity's reference (BERTSERVE_SHADOW_RATE)
REFERENCE_ONNX_FILE = "reference.onnx"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class ModelCard:
    task: str
    labels: list[str] = field(default_factory=list)
    # classification: "single_label" | "multi_label" | "regression"
    problem_type: str | None = None
    # multi-label decision thresholds per label, tuned on validation data
    thresholds: dict[str, float] | None = None
    max_length: int = 128
    base_model: str = ""
    demo: bool = False
    # what the model was trained on: {"train": {"source", "sha256", "rows"}, "validation": {...}}
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    primary_metric: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    # set by export: the variant the exporting machine chose (`model.onnx`) ...
    variant: str | None = None
    # ... and every variant published: {name: {"file", "device", "passed", "quantization"}}; the
    # service serves the fastest that runs where it runs (bertserve.variants)
    variants: dict[str, dict[str, Any]] | None = None
    # a few held-out inputs the service times the variants on at start (never shown at /info)
    samples: list[Any] | None = None
    # the model's own long-text policy ({"policy": "chunk", "aggregate": "mean"}), gated with it
    long_text: dict[str, str] | None = None
    parity: dict[str, Any] | None = None
    files: dict[str, str] | None = None
    format: str = FORMAT
    bertserve_version: str = __version__
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "card") -> ModelCard:
        if raw.get("format") != FORMAT:
            raise ArtifactError(f"{source}: format {raw.get('format')!r} is not {FORMAT!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ArtifactError(f"{source}: unknown fields {unknown} (written by a newer bertserve?)")
        if "task" not in raw:
            raise ArtifactError(f"{source}: no 'task' field")
        return cls(**raw)

    def public(self) -> dict[str, Any]:
        """What `/info` shows: everything but training internals that name local paths."""
        out = self.to_dict()
        out["data"] = {
            split: {k: v for k, v in info.items() if k != "source"} for split, info in self.data.items()
        }
        out.pop("training", None)
        out.pop("samples", None)  # the user's data
        base = out.get("base_model")
        if isinstance(base, str) and (base.startswith(("/", "~", ".")) or "\\" in base):
            out["base_model"] = Path(base).name  # a local directory: its name, not the server's path
        return out


def write_card(directory: str | Path, card: ModelCard) -> Path:
    path = Path(directory) / CARD_FILE
    path.write_text(json.dumps(card.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def read_card(directory: str | Path) -> ModelCard:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{directory} has no {CARD_FILE}: it is not a bertserve model directory "
            "(train one with `bertserve train`, or export one with `bertserve export`)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    return ModelCard.from_dict(raw, source=str(path))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_files(directory: str | Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(Path(directory) / name) for name in sorted(names)}


def verify_files(directory: str | Path, card: ModelCard) -> None:
    """Refuse an artifact whose files differ from the checksums recorded at export."""
    if not card.files:
        raise ArtifactError(f"{directory}: {CARD_FILE} records no file checksums; re-export the model")
    for name, expected in card.files.items():
        path = Path(directory) / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing from the artifact")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path} does not match the checksum recorded at export "
                f"(expected {expected[:12]}..., found {actual[:12]}...): the file was changed or "
                "truncated; re-export and publish the model"
            )
