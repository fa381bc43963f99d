"""The inference path shared by the service, export's parity gate, `evaluate` and `bench`.

Tokenization (the `tokenizers` library, never transformers), batching into padded numpy arrays,
a backend that maps those arrays to logits, and the task's post-processing. The ONNX Runtime
backend lives here; export adds a PyTorch backend with the same two members, so the parity gate
runs both through the very same code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tokenizers import Encoding, Tokenizer

from bertserve.artifact import ONNX_FILE, TOKENIZER_FILE, ModelCard
from bertserve.errors import ArtifactError, InputTooLongError, ValidationError
from bertserve.registry import get_task

log = logging.getLogger(__name__)


class Backend(Protocol):
    input_names: list[str]
    providers: list[str]  # where it runs (onnxruntime's providers; ["torch"] for a PyTorch backend)

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass
class Encoded:
    """One tokenized text: its ids, whether it was cut to the model's window, and its length."""

    encoding: Encoding
    truncated: bool

    @property
    def n_tokens(self) -> int:
        return len(self.encoding.ids)


@dataclass
class Windows:
    """What the model produced for one input that was cut into overlapping windows (an NER text,
    a QA item): the input, its windows and one output row per window, cut to the window's tokens."""

    source: Any
    items: list[Encoded]
    rows: list[np.ndarray]


# What to do with a text longer than the model's window (`long_text`): cut it to the window, refuse
# it, or read it whole in overlapping windows whose outputs are aggregated into one.
TRUNCATE, ERROR, CHUNK = "truncate", "error", "chunk"
LONG_TEXT_POLICIES = (TRUNCATE, ERROR, CHUNK)
# How a chunked text's window outputs become one: `mean` weighs each window by its tokens (every
# part of the text counts by its length); `max` keeps the window the model is surest of (the task's
# `window_strength`: a verdict stated in one paragraph decides).
MEAN, MAX = "mean", "max"
AGGREGATES = (MEAN, MAX)


@dataclass(frozen=True)
class LongText:
    """A long-text policy and, for `chunk`, how windows are aggregated."""

    policy: str = TRUNCATE
    aggregate: str = MEAN

    @classmethod
    def of(cls, value: Any) -> LongText:
        """From a card's or a setting's record: None, "chunk", or {"policy": ..., "aggregate": ...}."""
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(value)
        return cls(value.get("policy", TRUNCATE), value.get("aggregate", MEAN))

    def record(self) -> dict[str, str]:
        return {"policy": self.policy, "aggregate": self.aggregate}

    @property
    def chunk(self) -> bool:
        return self.policy == CHUNK


def window_stride(card: Any) -> int:
    """Tokens shared by neighbouring windows of a long text: a quarter of the window."""
    return max(1, card.max_length // 4)


class TextEncoder:
    def __init__(self, tokenizer: str | Path | Tokenizer, max_length: int):
        serialized = tokenizer.to_str() if isinstance(tokenizer, Tokenizer) else Path(tokenizer).read_text()
        self.max_length = max_length
        self._serialized = serialized
        self.tokenizer = self._fresh()
        self.tokenizer.enable_truncation(max_length=max_length)
        self._full = self._fresh()
        self._windowed: dict[tuple[int, str], Tokenizer] = {}

    def _fresh(self) -> Tokenizer:
        tok = Tokenizer.from_str(self._serialized)
        tok.no_padding()
        tok.no_truncation()
        return tok

    def windows(self, texts: Sequence[str], stride: int,
                questions: Sequence[str] | None = None) -> list[list[Encoded]]:
        """Each text (or question + context pair, the context being cut) as overlapping windows of
        at most `max_length` tokens sharing `stride` tokens with their neighbours: nothing is cut off."""
        strategy = "longest_first" if questions is None else "only_second"
        tok = self._windowed.get((stride, strategy))
        if tok is None:
            tok = self._windowed[(stride, strategy)] = self._fresh()
            tok.enable_truncation(max_length=self.max_length, stride=stride, strategy=strategy)
        inputs = list(texts) if questions is None else list(zip(questions, texts, strict=True))
        return [[Encoded(e, truncated=False) for e in (enc, *enc.overflowing)] for enc in tok.encode_batch(inputs)]

    @property
    def whole(self) -> Tokenizer:
        """The tokenizer without truncation or padding (TEI's /tokenize and /decode)."""
        return self._full

    def encode(self, texts: Sequence[str | Sequence[str]], truncate: bool = True,
               item: str | None = None, direction: str = "right") -> list[Encoded]:
        """Texts, or pairs `(a, b)` read as the model's pair input (`[CLS] a [SEP] b [SEP]`, segment
        ids where the model has them). A pair longer than the window is cut longest side first
        (`longest_first`): tokens come off the longer text until both fit, so the shorter one (a
        query) keeps all its tokens unless both are over half the window. A text is cut at its end
        (direction "right") or at its start ("left"); with truncate=false an input over the window
        is refused."""
        if direction == "right":
            tokenizer = self.tokenizer
        else:
            tokenizer = self._windowed.get((0, direction))
            if tokenizer is None:
                tokenizer = self._windowed[(0, direction)] = self._fresh()
                tokenizer.enable_truncation(max_length=self.max_length, direction=direction)
        inputs = [x if isinstance(x, str) else (x[0], x[1]) for x in texts]
        encodings = tokenizer.encode_batch(inputs)
        out = [Encoded(e, truncated=bool(e.overflowing)) for e in encodings]
        if not truncate:
            for i, encoded in enumerate(out):
                if encoded.truncated:
                    n = len(self._full.encode(*_pair(inputs[i])).ids)
                    what = item or ("text" if isinstance(inputs[i], str) else "pair")
                    with_query = "" if isinstance(inputs[i], str) or item is None else " with the query"
                    raise InputTooLongError(
                        f"{what} {i}{with_query} has {n} tokens and the model takes {self.max_length}: "
                        f"send truncate=true to cut it, or shorten the {what}"
                    )
        return out


@dataclass
class Chunks:
    """Texts read whole in windows (`long_text=chunk`): each text's windows and their output rows,
    and one aggregated row per text (what the task's post-processing takes)."""

    windows: list[Windows]
    rows: np.ndarray
    chosen: list[int]  # per text: the window `max` kept, or the strongest one (reported either way)


def window_span(item: Encoded) -> tuple[int, int]:
    """The characters a window covers (its first to its last non-special token)."""
    spans = [o for o, special in zip(item.encoding.offsets, item.encoding.special_tokens_mask, strict=True)
             if not special]
    return (spans[0][0], spans[-1][1]) if spans else (0, 0)


def aggregate_windows(windows: Sequence[Windows], aggregate: str, card: Any) -> Chunks:
    """One row per text from its windows' rows: the token-weighted mean, or (`max`) the row of the
    window the task's `window_strength` rates highest. The strongest window is reported either way."""
    spec = get_task(card.task)
    strength = spec.window_strength
    if aggregate == MAX and strength is None:
        raise ValidationError(f"aggregate=max needs a task that rates its windows; {card.task} models take "
                              "aggregate=mean (the token-weighted mean of the windows)")
    rows, chosen = [], []
    for w in windows:
        stacked = np.stack(w.rows).astype(np.float64)
        best = int(np.argmax(strength(stacked, card))) if strength is not None else 0
        chosen.append(best)
        if aggregate == MAX:
            rows.append(stacked[best])
        else:
            weights = np.array([item.n_tokens for item in w.items], dtype=np.float64)
            rows.append(weights @ stacked / weights.sum())
    return Chunks(list(windows), np.stack(rows) if rows else np.zeros((0,)), chosen)


def _pair(x: str | tuple[str, str]) -> tuple[str, str | None]:
    return (x, None) if isinstance(x, str) else x


def trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """A token's character span without the whitespace some tokenizers count in: SentencePiece's
    `▁` and byte-level BPE's `Ġ` mark the space before a word, and their offsets may cover it
    (RoBERTa's own tokenizer trims it, others do not). A token that is only whitespace comes back
    empty (start == end)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def collate(items: Sequence[Encoded], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Pad a batch to its longest member (dynamic padding), in the arrays the model expects."""
    width = max(item.n_tokens for item in items)
    ids = np.zeros((len(items), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, item in enumerate(items):
        n = item.n_tokens
        ids[row, :n] = item.encoding.ids
        mask[row, :n] = 1
        types[row, :n] = item.encoding.type_ids
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: feeds[name] for name in input_names}


def providers(device: str = "auto") -> list[str]:
    """CUDA when onnxruntime-gpu and a GPU are present (or asked for), else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ArtifactError("device=cuda was asked for, but onnxruntime has no CUDA provider here "
                            "(install onnxruntime-gpu: `make setup ORT=gpu`)")
    return ["CPUExecutionProvider"]


class OnnxBackend:
    def __init__(self, model_file: str | Path, threads: int = 0, device: str = "auto",
                 output_name: str | tuple[str, ...] | None = None, spinning: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        if not spinning:  # idle intra-op threads sleep instead of spinning (the CPU goes to the HTTP path)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=providers(device))
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        wanted = [output_name] if isinstance(output_name, str) else list(output_name or outputs[:1])
        missing = [name for name in wanted if name not in outputs]
        if missing:
            raise ArtifactError(f"{model_file} has no output {missing[0]!r} (it has {outputs})")
        self.output_names = wanted
        self.providers = self.session.get_providers()

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The task's output; several (QA's start and end logits) are stacked on a last axis."""
        out = self.session.run(self.output_names, feeds)
        return out[0] if len(out) == 1 else np.stack(out, axis=-1)


# The service's default token budget of one forward pass (BERTSERVE_MAX_BATCH_TOKENS).
MAX_BATCH_TOKENS = 8192
# What one more forward pass costs, in padded tokens: onnxruntime's per-call work and the
# threads' hand-off. Measured with MiniLM int8 on two cores, one text of 25 tokens alone costs
# about as much as 14 more tokens in a batch; a margin above that keeps passes from getting tiny.
CALL_COST_TOKENS = 32


def plan_sub_batches(lengths: Sequence[int], max_tokens: int, max_size: int,
                     call_cost: int = CALL_COST_TOKENS) -> list[list[int]]:
    """Indices grouped into forward passes: each within `max_tokens` (size x longest member) and
    `max_size`, and together computing the fewest tokens, padding included, counting each pass
    as `call_cost` tokens more. Texts are sorted by length and cut where the padding saved is
    worth another pass (dynamic programming over the sorted lengths, O(n x max_size))."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    width = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, max(-1, j - 1 - max_size), -1):  # the last pass holds texts i..j-1
            size = j - i
            if size > 1 and size * width[j - 1] > max_tokens:
                break
            cost = best[i] + size * width[j - 1] + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


class Pipeline:
    """Encoder + backend + the task's post-processing. `predict` is what a user gets."""

    def __init__(self, card: ModelCard, encoder: TextEncoder, backend: Backend):
        self.card = card
        self.encoder = encoder
        self.backend = backend
        self.spec = get_task(card.task)

    @classmethod
    def from_artifact(cls, directory: str | Path, card: ModelCard, threads: int = 0,
                      device: str = "auto", spinning: bool = True, variant: str | None = None) -> Pipeline:
        """The artifact's `variant` (one of `card.variants`; default the export's choice, `model.onnx`)."""
        directory = Path(directory)
        model_file = ONNX_FILE
        if variant is not None and variant != card.variant:
            if variant not in (card.variants or {}):
                raise ArtifactError(f"{directory} has no {variant} variant; it has "
                                    f"{', '.join(card.variants or [str(card.variant)])}")
            model_file = card.variants[variant]["file"]
        for name in (model_file, TOKENIZER_FILE):
            if not (directory / name).is_file():
                raise ArtifactError(f"{directory} has no {name}: is it an exported bertserve artifact?")
        encoder = TextEncoder(directory / TOKENIZER_FILE, card.max_length)
        backend = OnnxBackend(directory / model_file, threads, device, get_task(card.task).output_name, spinning)
        return cls(card, encoder, backend)

    @property
    def long_text(self) -> LongText:
        """The model's own long-text policy (export's --long-text, gated with it): truncate by default."""
        return LongText.of(getattr(self.card, "long_text", None))

    def chunks(self, policy: LongText) -> bool:
        """Whether `policy` reads texts in windows here (tasks with their own windows, NER and QA,
        read every text whole anyway)."""
        return policy.chunk and self.spec.featurize is None

    def featurize(self, inputs: Sequence[Any], truncate: bool = True, direction: str = "right",
                  chunk: bool = False) -> list[list[Encoded]]:
        """The model inputs for each input: one encoding per text, or a task's windows; with `chunk`
        every text as overlapping windows (nothing cut)."""
        if self.spec.featurize is not None:
            return self.spec.featurize(self.encoder, inputs, self.card)
        if chunk:
            if any(not isinstance(x, str) for x in inputs):
                raise ValidationError("long_text=chunk reads single texts; a pair longer than the window is cut "
                                      "longest side first: send long_text=truncate (or error) with pairs")
            if direction != "right":
                raise ValidationError("long_text=chunk reads the whole text: a truncation direction does not apply")
            return self.encoder.windows(inputs, window_stride(self.card))
        return [[item] for item in self.encoder.encode(inputs, truncate=truncate, direction=direction)]

    def forward(self, items: Sequence[Encoded]) -> list[np.ndarray]:
        """One forward pass: one output row per item; per-token outputs cut to the item's tokens."""
        out = self.backend.logits(collate(items, self.backend.input_names))
        if out.ndim == 3:
            return [row[: item.n_tokens] for row, item in zip(out, items, strict=True)]
        return list(out)

    def assemble(self, inputs: Sequence[Any], features: Sequence[list[Encoded]],
                 rows: Sequence[np.ndarray], aggregate: str | None = None) -> np.ndarray | list[Windows] | Chunks:
        """Rows in feature order back to what `postprocess` takes: one row per input, or Windows;
        chunked texts (`aggregate` given) as Chunks, whose `rows` postprocess takes."""
        if self.spec.featurize is None and aggregate is None:
            return np.stack(rows)
        out, at = [], 0
        for source, items in zip(inputs, features, strict=True):
            out.append(Windows(source, list(items), list(rows[at : at + len(items)])))
            at += len(items)
        if aggregate is not None:
            return aggregate_windows(out, aggregate, self.card)
        return out

    def outputs(self, inputs: Sequence[Any], batch_size: int = 32, truncate: bool = True,
                progress: bool = False, max_batch_tokens: int | None = None,
                long_text: LongText | None = None) -> np.ndarray | list[Windows]:
        """Raw model outputs in input order, run in length-sorted sub-batches (as the service does).
        `long_text` (default: the model's own policy) may read long texts whole (`chunk`); `truncate`
        false refuses them."""
        policy = long_text or self.long_text
        chunk = self.chunks(policy)
        truncate = truncate and policy.policy != ERROR
        features = self.featurize(inputs, truncate=truncate, chunk=chunk)
        items = [item for group in features for item in group]
        lengths = [item.n_tokens for item in items]
        groups = plan_sub_batches(lengths, max_batch_tokens or batch_size * max(lengths, default=1), batch_size)
        rows: list[np.ndarray | None] = [None] * len(items)
        if progress:
            from tqdm.auto import tqdm

            groups = tqdm(groups, desc="predict", unit="batch")
        for group in groups:
            for i, row in zip(group, self.forward([items[i] for i in group]), strict=True):
                rows[i] = row
        out = self.assemble(inputs, features, rows, policy.aggregate if chunk else None)  # type: ignore[arg-type]
        return out.rows if isinstance(out, Chunks) else out

    def predict(self, inputs: Sequence[Any], batch_size: int = 32, truncate: bool = True,
                progress: bool = False, max_batch_tokens: int | None = None,
                long_text: LongText | None = None) -> list[dict[str, Any]]:
        outputs = self.outputs(inputs, batch_size, truncate, progress, max_batch_tokens, long_text)
        return self.spec.postprocess(outputs, self.card)
