"""Sentence similarity and embeddings: a bi-encoder whose ONNX graph ends in its pooling (the base
model's own: mean for the default encoder, CLS for BGE-style models; mean for a plain encoder).

Normalization happens here, in the one post-processing function the parity gate and the
service share; the service can also hand out the raw pooled vectors.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.compat import answers, hf, tei
from bertserve.errors import ValidationError
from bertserve.metrics import pearson, spearman
from bertserve.registry import Route, Scenario, TaskSpec, register
from bertserve.report import (
    MAX_ROWS,
    Plot,
    Section,
    Series,
    Table,
    buckets,
    sample_points,
    show_input,
)
from bertserve.runtime import MAX, Chunks, LongText
from bertserve.schemas import (
    EmbedRequest,
    EmbedResponse,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIUsage,
    SimilarityRequest,
    SimilarityResponse,
    validated,
)

SCORED, PAIRS = "scored_pairs", "pairs"  # how a similarity model was trained (card.problem_type)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def embed(outputs: np.ndarray, normalize: bool = True) -> np.ndarray:
    return l2_normalize(outputs) if normalize else np.asarray(outputs, dtype=np.float32)


def postprocess(outputs: np.ndarray, card: Any) -> list[dict[str, Any]]:
    return [{"embedding": row} for row in embed(outputs)]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def split_examples(examples: Sequence[dict[str, Any]]) -> tuple[list[str], list[Any]]:
    """Pairs become 2n texts (all first sentences, then all second ones); gold is the scores."""
    texts = [ex["text_a"] for ex in examples] + [ex["text_b"] for ex in examples]
    return texts, [ex.get("score") for ex in examples]


def score(results: Sequence[dict[str, Any]], gold: Sequence[Any], card: Any) -> dict[str, float]:
    n = len(gold)
    vectors = np.stack([r["embedding"] for r in results])
    a, b = vectors[:n], vectors[n:]
    if all(g is not None for g in gold):
        cos = cosine_rows(a, b)
        gold_arr = np.array([float(g) for g in gold])
        return {"spearman": spearman(gold_arr, cos), "pearson": pearson(gold_arr, cos)}
    # unscored pairs: is each first sentence closest to its own partner among all partners?
    sims = l2_normalize(a) @ l2_normalize(b).T
    return {"recall@1": float(np.mean(sims.argmax(axis=1) == np.arange(n)))}


def primary_metric(card: Any) -> str:
    return "recall@1" if card.problem_type == PAIRS else "spearman"


def read_examples(source: str, columns: Any, bad: Any = None) -> list[dict[str, Any]]:
    from bertserve.data import load_pairs

    return load_pairs(source, columns, bad)


def agree(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """Embeddings with cosine at least 0.99."""
    return float(np.dot(x["embedding"], y["embedding"])) >= 0.99


def one_minus_cosine(x: dict[str, Any], y: dict[str, Any]) -> float:
    """How far apart two embeddings are (shadow parity's histogram)."""
    return max(0.0, 1.0 - float(np.dot(x["embedding"], y["embedding"])))


def cosines(reference: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> dict[str, float]:
    cos = [float(np.dot(x["embedding"], y["embedding"])) for x, y in zip(reference, results, strict=True)]
    return {"mean_cosine": float(np.mean(cos)), "min_cosine": float(np.min(cos))}


def report(card: Any, inputs: Sequence[str], gold: Sequence[Any], results: Sequence[dict[str, Any]]) -> Section:
    """Cosine against the gold score, and the pairs the model ranks furthest from their gold rank."""
    section = Section("Quality")
    n = len(gold)
    vectors = np.stack([r["embedding"] for r in results])
    if any(g is None for g in gold):  # unscored pairs: where does each partner rank?
        sims = l2_normalize(vectors[:n]) @ l2_normalize(vectors[n:]).T
        ranks = (sims > np.diag(sims)[:, None]).sum(axis=1) + 1
        cats = ["1", "2", "3", "4-10", "11+"]
        which = buckets(ranks.tolist(), [1, 2, 3, 4, 11])
        section.blocks.append(Plot("Rank of each text's own partner among all partners", "bar", "rank", "pairs",
                                   categories=cats, series=[Series("pairs", list(range(len(cats))),
                                                                   [which.count(b) for b in range(len(cats))])]))
        worst = np.argsort(-ranks, kind="stable")[:MAX_ROWS]
        section.blocks.append(Table("Partners ranked lowest", ["text", "partner", "rank"],
                                    [[show_input(inputs[i]), show_input(inputs[n + i]), int(ranks[i])] for i in worst]))
        return section
    cos = cosine_rows(vectors[:n], vectors[n:])
    g = np.array([float(x) for x in gold])
    xs, ys, note = sample_points(g, cos)
    section.blocks.append(Plot("Cosine similarity against the gold score", "scatter", "gold score", "cosine",
                               series=[Series("pairs", xs, ys)]))
    if note:
        section.notes.append(note)
    # ranks as fractions, so the gold scale (0-5, 0-1) does not matter
    off = np.abs(np.argsort(np.argsort(cos)) - np.argsort(np.argsort(g))) / max(1, n - 1)
    worst = np.argsort(-off, kind="stable")[:MAX_ROWS]
    section.blocks.append(Table("Pairs ranked furthest from their gold rank", ["text a", "text b", "gold", "cosine"],
                                [[show_input(inputs[i]), show_input(inputs[n + i]), round(g[i], 3), round(float(cos[i]), 3)]
                                 for i in worst]))
    return section


def show_embedding(result: dict[str, Any]) -> str:
    vector = np.asarray(result["embedding"])
    return f"[{', '.join(f'{v:.3f}' for v in vector[:4])}, …] ({vector.size} dims)"


# --- serving ------------------------------------------------------------------------------------


async def _vectors(ctx: Any, model: Any, texts: Sequence[str], truncate: bool, normalize: bool = True,
                   direction: str = "right") -> tuple[list[Any], np.ndarray]:
    features, outputs = await ctx.infer(model, texts, truncate, direction)
    return [group[0] for group in features], embed(outputs, normalize)


def _windows(long_text: LongText, features: Sequence[Sequence[Any]]) -> list[int] | None:
    return [len(group) for group in features] if long_text.chunk else None


async def embed_route(ctx: Any, body: EmbedRequest) -> EmbedResponse:
    model = ctx.model(body.model)
    long_text = ctx.long_text(model, body)  # aggregate: mean only (the schema), one vector per text
    ctx.check(body.texts)
    features, outputs = await ctx.infer(model, body.texts, long_text=long_text)
    vectors = embed(outputs.rows if isinstance(outputs, Chunks) else outputs, body.normalize)
    return EmbedResponse(model=model.tag, dimensions=vectors.shape[1], embeddings=vectors.tolist(),
                         truncated=[group[0].truncated for group in features], windows=_windows(long_text, features))


async def similarity_route(ctx: Any, body: SimilarityRequest) -> SimilarityResponse:
    """Cosine of each sentence to the source sentence. Chunked with aggregate=max, a long sentence
    scores by its best window (a long document matches a query when any part of it does)."""
    model = ctx.model(body.model)
    long_text = ctx.long_text(model, body)
    ctx.check(body.sentences, "sentences", "sentence")
    ctx.check([body.source_sentence], "source_sentence", "source_sentence", limit=1)
    averaged = LongText(long_text.policy) if long_text.chunk else long_text  # the windows come back either way
    features, outputs = await ctx.infer(model, [*body.sentences, body.source_sentence], long_text=averaged)
    if not isinstance(outputs, Chunks):
        vectors = embed(outputs)
        return SimilarityResponse(model=model.tag, scores=(vectors[:-1] @ vectors[-1]).tolist())
    vectors = embed(outputs.rows)
    source = vectors[-1]
    if long_text.aggregate == MAX:
        scores = [float((embed(np.stack(w.rows)) @ source).max()) for w in outputs.windows[:-1]]
    else:
        scores = (vectors[:-1] @ source).tolist()
    return SimilarityResponse(model=model.tag, scores=scores, windows=_windows(long_text, features[:-1]))


async def openai_route(ctx: Any, body: OpenAIEmbeddingRequest) -> OpenAIEmbeddingResponse:
    texts = [body.input] if isinstance(body.input, str) else body.input
    model = ctx.model(body.model)
    ctx.check(texts, "input", "input")
    items, vectors = await _vectors(ctx, model, texts, truncate=True)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise ValidationError(f"dimensions={body.dimensions}, but this model's embeddings have "
                              f"{vectors.shape[1]}: leave dimensions out or send {vectors.shape[1]}")
    tokens = sum(item.n_tokens for item in items)
    data = [OpenAIEmbedding(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode()
                            if body.encoding_format == "base64" else v.tolist())
            for i, v in enumerate(vectors)]
    return OpenAIEmbeddingResponse(data=data, model=model.tag,
                                   usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens))


async def tei_embed(ctx: Any, body: tei.EmbedRequest) -> tei.Vectors:
    """TEI's /embed, which is also the HF feature-extraction task's body and answer."""
    direction = tei.direction_of(body.truncation_direction, body.prompt_name)
    model = ctx.model(body.model)
    texts = body.texts()
    ctx.check(texts, "inputs", "input")
    _, vectors = await _vectors(ctx, model, texts, bool(body.truncate), body.normalize, direction)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise ValidationError(f"dimensions={body.dimensions}: this model's embeddings have {vectors.shape[1]} "
                              "and it was not trained to be cut shorter; leave dimensions out")
    return tei.Vectors(vectors.tolist())


async def tei_similarity(ctx: Any, body: tei.SimilarityRequest) -> tei.Scores:
    """TEI's /similarity, which is also the HF sentence-similarity task's body and answer."""
    params = body.parameters or tei.SimilarityParameters()
    direction = tei.direction_of(params.truncation_direction, params.prompt_name)
    model = ctx.model(body.model)
    source, sentences = body.inputs.source_sentence, body.inputs.sentences
    ctx.check(sentences, "inputs.sentences", "sentence")
    ctx.check([source], "inputs.source_sentence", "source_sentence", limit=1)
    _, vectors = await _vectors(ctx, model, [*sentences, source], bool(params.truncate), direction=direction)
    return tei.Scores((vectors[:-1] @ vectors[-1]).tolist())


def check_embed(payload: dict[str, Any], body: Any) -> str | None:
    response, problem = validated(EmbedResponse, body)
    if response is None:
        return problem
    if len(response.embeddings) != len(payload["texts"]):
        return f"{len(response.embeddings)} vectors for {len(payload['texts'])} texts"
    if any(len(v) != response.dimensions for v in response.embeddings):
        return "a vector does not have the announced dimensions"
    return None


def check_similarity(payload: dict[str, Any], body: Any) -> str | None:
    response, problem = validated(SimilarityResponse, body)
    if response is None:
        return problem
    if len(response.scores) != len(payload["sentences"]):
        return f"{len(response.scores)} scores for {len(payload['sentences'])} sentences"
    if any(not -1.001 <= s <= 1.001 for s in response.scores):
        return "a cosine score outside [-1, 1]"
    return None


def check_openai(payload: dict[str, Any], body: Any) -> str | None:
    response, problem = validated(OpenAIEmbeddingResponse, body)
    if response is None:
        return problem
    if len(response.data) != len(payload["input"]):
        return f"{len(response.data)} embeddings for {len(payload['input'])} inputs"
    return None


EMBED_SCENARIO = Scenario(build=lambda src: {"inputs": src.texts(), "truncate": True},
                          check=answers(tei.Vectors, lambda p: len(p["inputs"])), weight=0)
SIMILARITY_SCENARIO = Scenario(
    build=lambda src: {"inputs": {"source_sentence": src.text(), "sentences": [src.text() for _ in range(src.count(8))]},
                       "parameters": {"truncate": True}},
    check=answers(tei.Scores, lambda p: len(p["inputs"]["sentences"])), weight=0)


def _interleaved(examples: Sequence[dict[str, Any]]) -> list[Any]:
    return [t for pair in examples for t in (pair["text_a"], pair["text_b"])]


SPEC = register(
    TaskSpec(
        name="similarity",
        auto_model="AutoModel",
        optimum_task="feature-extraction",
        postprocess=postprocess,
        score=score,
        primary_metric=primary_metric,
        split_examples=split_examples,
        read_examples=read_examples,
        agree=agree,
        report=report,
        show_answer=show_embedding,
        parity_measures=cosines,
        difference=one_minus_cosine,
        routes=(
            Route("/embed", EmbedRequest, EmbedResponse, embed_route,
                  summary="Sentence embeddings (the model's own pooling, L2-normalized unless normalize=false)",
                  scenario=Scenario(build=lambda src: {"texts": src.texts()}, check=check_embed)),
            Route("/similarity", SimilarityRequest, SimilarityResponse, similarity_route,
                  summary="Cosine similarity of each sentence to a source sentence",
                  # a query against a handful of candidates, as a search or dedup client sends it
                  scenario=Scenario(build=lambda src: {"source_sentence": src.text(),
                                                       "sentences": [src.text() for _ in range(src.count(8))]},
                                    check=check_similarity)),
            Route("/v1/embeddings", OpenAIEmbeddingRequest, OpenAIEmbeddingResponse, openai_route,
                  summary="OpenAI-compatible embeddings",
                  scenario=Scenario(build=lambda src: {"input": src.texts()}, check=check_openai)),
            # other servers' shapes: checked by the image test, not in the load mix (weight 0)
            Route(tei.PREFIX + "/embed", tei.EmbedRequest, tei.Vectors, tei_embed, summary="TEI's /embed",
                  scenario=EMBED_SCENARIO),
            Route(tei.PREFIX + "/similarity", tei.SimilarityRequest, tei.Scores, tei_similarity,
                  summary="TEI's /similarity", scenario=SIMILARITY_SCENARIO),
            Route(hf.PREFIX + "/feature-extraction", tei.EmbedRequest, tei.Vectors, tei_embed, by_model=True,
                  summary="Hugging Face Inference API feature-extraction", scenario=EMBED_SCENARIO),
            Route(hf.PREFIX + "/sentence-similarity", tei.SimilarityRequest, tei.Scores, tei_similarity,
                  by_model=True, summary="Hugging Face Inference API sentence-similarity",
                  scenario=SIMILARITY_SCENARIO),
        ),
        parse_response=lambda body: [{"embedding": np.asarray(v, dtype=np.float32)} for v in body["embeddings"]],
        output_name="sentence_embedding",
        bench_data=("stsb/dev.tsv", {}),
        bench_inputs=_interleaved,
        demo={"train": "similarity/pairs.jsonl", "validation": "similarity/pairs.jsonl", "epochs": 0,
              "max_length": 128},
        trains_with_zero_epochs=True,
    )
)
