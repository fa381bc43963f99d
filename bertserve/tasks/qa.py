"""Extractive question answering over contexts of any length.

Each (question, context) item becomes windows `[CLS] question [SEP] context-part [SEP]` whose
context parts overlap by a third of the window, so no part of a context is cut off. The answer is
the best start/end pair over all windows (n-best search, `max_answer_length` tokens at most);
models trained with unanswerable questions also compare it with the null (CLS) score, against a
threshold tuned on validation. `postprocess` is the one function export's parity gate and `/qa` share.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.compat import answers as compat_answers
from bertserve.compat import hf
from bertserve.errors import ValidationError
from bertserve.registry import Route, Scenario, TaskSpec, register
from bertserve.report import MAX_ROWS, Plot, Section, Series, Table, buckets, clip
from bertserve.runtime import trim_span
from bertserve.schemas import QaRequest, QaResponse, QaResult, validated

N_BEST = 20  # start and end candidates per window
MAX_ANSWER_TOKENS = 30  # the longest answer, in tokens
NO_ANSWER = "no_answer"  # key of the null-score threshold in the card's thresholds
WITH_UNANSWERABLE = "with_unanswerable"  # card.problem_type of models trained with them


def window_stride(card: Any) -> int:
    """Context tokens shared by neighbouring windows: a third of the window (128 of 384)."""
    return max(1, card.max_length // 3)


def max_question_tokens(card: Any) -> int:
    """Longest question: a window keeps room for its shared stride plus an eighth of new context."""
    return card.max_length - window_stride(card) - 3 - card.max_length // 8


def question_tokens(encoder: Any, questions: Sequence[str]) -> list[int]:
    return [len(e.ids) for e in encoder.tokenizer.encode_batch(list(questions), add_special_tokens=False)]


def featurize(encoder: Any, items: Sequence[dict[str, str]], card: Any) -> list[list[Any]]:
    questions = [item["question"] for item in items]
    limit = max_question_tokens(card)
    for i, n in enumerate(question_tokens(encoder, questions)):
        if n > limit:
            raise ValidationError(f"question {i} has {n} tokens; this model takes questions of "
                                  f"at most {limit} tokens (its window is {card.max_length}): shorten it")
    return encoder.windows([item["context"] for item in items], window_stride(card), questions=questions)


def context_span(encoding: Any) -> tuple[int, int] | None:
    """First and last token positions of the context in a window; None when the context has no
    tokens at all (only characters the tokenizer drops, such as control characters)."""
    positions = [p for p, s in enumerate(encoding.sequence_ids) if s == 1]
    return (positions[0], positions[-1]) if positions else None


def null_position(encoding: Any) -> int:
    """Where a window's null answer sits: the classification token, found by the sequence ids (not
    assumed at 0): the special token before the question (`[CLS]`, RoBERTa's `<s>`), or, for a
    tokenizer that puts it last (XLNet-style), the last special token."""
    ids = encoding.sequence_ids
    specials = [p for p, s in enumerate(ids) if s is None]
    content = next((p for p, s in enumerate(ids) if s is not None), len(ids))
    if specials and specials[0] < content:
        return specials[0]
    return specials[-1] if specials else 0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max()
    return z - np.log(np.exp(z).sum())


def best_span(windows: Any, max_answer_tokens: int = MAX_ANSWER_TOKENS,
              n_best: int = N_BEST) -> tuple[float, float, int, int, float]:
    """(best span score, null score, start char, end char, probability) over all windows; the
    score of a span is start logit + end logit, the null score is the lowest null-token (CLS) score."""
    found, null = candidate_spans(windows, max_answer_tokens, n_best)
    score, start, end, prob = found[0] if found else (-np.inf, 0, 0, 0.0)
    return float(score), float(null), int(start), int(end), prob


def candidate_spans(windows: Any, max_answer_tokens: int = MAX_ANSWER_TOKENS,
                    n_best: int = N_BEST) -> tuple[list[tuple[float, int, int, float]], float]:
    """Every candidate answer (score, start char, end char, probability), best first, each span
    once (its best window), and the null score. A span's characters leave out the whitespace its
    first and last tokens may cover (`▁`, `Ġ`); a span of whitespace alone is no answer."""
    context: str = windows.source["context"]
    found: dict[tuple[int, int], tuple[float, int, int, float]] = {}
    null = np.inf
    for item, row in zip(windows.items, windows.rows, strict=True):
        enc = item.encoding
        start_logits, end_logits = row[:, 0].astype(np.float64), row[:, 1].astype(np.float64)
        at = null_position(enc)
        null = min(null, start_logits[at] + end_logits[at])
        span = context_span(enc)
        if span is None:
            continue
        lo, hi = span
        log_p_start, log_p_end = _log_softmax(start_logits), _log_softmax(end_logits)
        starts = lo + np.argsort(start_logits[lo : hi + 1])[::-1][:n_best]
        ends = lo + np.argsort(end_logits[lo : hi + 1])[::-1][:n_best]
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > max_answer_tokens:
                    continue
                value = float(start_logits[s] + end_logits[e])
                key = trim_span(context, int(enc.offsets[s][0]), int(enc.offsets[e][1]))
                if key[0] >= key[1]:
                    continue
                if key not in found or value > found[key][0]:
                    found[key] = (value, *key, float(np.exp(log_p_start[s] + log_p_end[e])))
    # stable: of equal scores the first found comes first
    return sorted(found.values(), key=lambda c: -c[0]), float(null)


def unanswered(score: float, null: float, card: Any) -> bool:
    """The null answer wins: no span at all, or the null score beats the best span's by more than
    the threshold tuned on validation."""
    threshold = (card.thresholds or {}).get(NO_ANSWER, 0.0)
    return bool(not np.isfinite(score) or null - score > threshold)


def decode(windows: Any, card: Any) -> dict[str, Any]:
    context: str = windows.source["context"]
    score, null, start, end, prob = best_span(windows)
    if card.problem_type == WITH_UNANSWERABLE:
        if unanswered(score, null, card):
            return {"answer": "", "start": 0, "end": 0, "score": prob, "no_answer": True}
        return {"answer": context[start:end], "start": start, "end": end, "score": prob, "no_answer": False}
    return {"answer": context[start:end], "start": start, "end": end, "score": prob}


def postprocess(outputs: Sequence[Any], card: Any) -> list[dict[str, Any]]:
    return [decode(w, card) for w in outputs]


# --- the official SQuAD metric ----------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, strip punctuation and articles, collapse whitespace (SQuAD's evaluate script)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:  # unanswerable: right only when both are empty
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def item_scores(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction, each the best over the reference answers, as SQuAD
    v2.0's official script scores it: references that normalize to nothing are dropped, and an
    item left without any is unanswerable, scoring 1 only when the prediction normalizes to ""."""
    references = [a for a in answers if normalize_answer(a)] or [""]
    em = max(float(normalize_answer(prediction) == normalize_answer(a)) for a in references)
    return em, max(token_f1(prediction, a) for a in references)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                 split: bool = False) -> dict[str, float]:
    """Exact match and F1 on a 0-100 scale (an unanswerable item's only reference is the empty
    answer). With `split`, or when some item is unanswerable, also SQuAD v2.0's breakdown with its
    counts: `has_ans_*` over the answerable items, `no_ans_*` over the unanswerable ones (where exact
    match and F1 both are the share answered "no answer"), `total`."""
    scores = [item_scores(p, a) for p, a in zip(predictions, references, strict=True)]
    answerable = [bool([a for a in answers if normalize_answer(a)]) for answers in references]

    def mean(which: Sequence[bool], k: int) -> float:
        chosen = [s[k] for s, w in zip(scores, which, strict=True) if w]
        return 100.0 * sum(chosen) / max(1, len(chosen))

    everything = [True] * len(scores)
    out = {"exact_match": mean(everything, 0), "f1": mean(everything, 1)}
    if split or not all(answerable):
        unanswerable = [not a for a in answerable]
        out.update({"has_ans_exact_match": mean(answerable, 0), "has_ans_f1": mean(answerable, 1),
                    "has_ans_total": sum(answerable), "no_ans_exact_match": mean(unanswerable, 0),
                    "no_ans_f1": mean(unanswerable, 1), "no_ans_total": sum(unanswerable), "total": len(scores)})
    return out


def score(results: Sequence[dict[str, Any]], gold: Sequence[Any], card: Any) -> dict[str, float]:
    return squad_scores([r["answer"] for r in results], gold, split=card.problem_type == WITH_UNANSWERABLE)


def no_answer_changes(ref: Sequence[dict[str, Any]], var: Sequence[dict[str, Any]]) -> dict[str, float]:
    """For the parity gate: questions a variant answers "no answer" where PyTorch gives a span, or
    the other way round (the tuned null threshold applied to both)."""
    if not any("no_answer" in r for r in ref):
        return {}
    return {"no_answer_changes": sum(bool(x.get("no_answer")) != bool(y.get("no_answer"))
                                     for x, y in zip(ref, var, strict=True))}


def split_examples(examples: Sequence[dict[str, Any]]) -> tuple[list[dict[str, str]], list[Any]]:
    items = [{"question": ex["question"], "context": ex["context"]} for ex in examples]
    return items, [[a["text"] for a in ex["answers"]] for ex in examples]


def read_examples(source: str, columns: Any, bad: Any = None) -> list[dict[str, Any]]:
    from bertserve.data_qa import load_qa_examples

    return load_qa_examples(source, bad=bad)


def agree(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """The same answer span."""
    return (x["start"], x["end"]) == (y["start"], y["end"])


def difference(x: dict[str, Any], y: dict[str, Any]) -> float:
    """1 - the overlap of two answer spans (characters shared over characters covered): 0 for the
    same span, 1 for disjoint ones or an answer against none (shadow parity's histogram)."""
    a, b = (x["start"], x["end"]), (y["start"], y["end"])
    if a == b:
        return 0.0
    union = max(a[1], b[1]) - min(a[0], b[0])
    shared = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return 1.0 - shared / union if union else 1.0


def report(card: Any, inputs: Sequence[dict[str, str]], gold: Sequence[Any], results: Sequence[dict[str, Any]]) -> Section:
    """Exact match and F1 by answer length and by context length; the answers furthest off."""
    section = Section("Quality")
    if card.problem_type == WITH_UNANSWERABLE or any("no_answer" in r for r in results):
        v2 = squad_scores([r["answer"] for r in results], gold, split=True)
        section.blocks.append(Table("Answerable and unanswerable questions (SQuAD v2.0: an unanswerable one is right "
                                    "when answered \"no answer\")", ["questions", "count", "exact match", "F1"],
                                    [[name, int(v2[f"{key}total"]), round(v2[f"{key}exact_match"], 2),
                                      round(v2[f"{key}f1"], 2)]
                                     for name, key in (("answerable", "has_ans_"), ("unanswerable", "no_ans_"),
                                                       ("all", ""))]))
    pairs = [item_scores(r["answer"], g) for r, g in zip(results, gold, strict=True)]
    em, f1 = [e for e, _ in pairs], [f for _, f in pairs]
    answer_words = [min((len(a.split()) for a in g), default=0) for g in gold]
    context_words = [len(x["context"].split()) for x in inputs]

    def by(title: str, values: Sequence[float], edges: Sequence[float], names: Sequence[str]) -> None:
        which = buckets(values, edges)
        cats, ems, f1s, counts = [], [], [], []
        for b, name in enumerate(names):
            members = [i for i, w in enumerate(which) if w == b]
            if members:
                cats.append(f"{name} ({len(members)})")
                ems.append(100 * float(np.mean([em[i] for i in members])))
                f1s.append(100 * float(np.mean([f1[i] for i in members])))
                counts.append(len(members))
        section.blocks.append(Plot(title, "bar", "", "score (0-100)", categories=cats,
                                   series=[Series("exact match", list(range(len(cats))), ems),
                                           Series("F1", list(range(len(cats))), f1s)]))

    by("Exact match and F1 by the gold answer's length (words; examples in brackets)", answer_words,
       [0, 1, 2, 3, 4, 6, 10], ["no answer", "1", "2", "3", "4-5", "6-9", "10+"])
    quartiles = [float(q) for q in np.quantile(context_words, [0.25, 0.5, 0.75])] if context_words else [0, 0, 0]
    by("Exact match and F1 by the context's length (words, quartiles)", context_words, [0, *quartiles],
       [f"< {quartiles[0]:.0f}", f"{quartiles[0]:.0f}-{quartiles[1]:.0f}", f"{quartiles[1]:.0f}-{quartiles[2]:.0f}",
        f">= {quartiles[2]:.0f}"])
    worst = [i for i in np.argsort(np.asarray(f1), kind="stable") if f1[i] < 1][:MAX_ROWS]
    section.blocks.append(Table(f"Answers furthest off ({sum(1 for v in f1 if v == 0)} of {len(f1):,} share no word "
                                "with any gold answer)", ["question", "gold", "predicted", "F1"],
                                [[clip(inputs[i]["question"]), " | ".join(gold[i]) or "(no answer)",
                                  results[i]["answer"] or "(no answer)", round(f1[i], 3)] for i in worst]))
    return section


def show_span(result: dict[str, Any]) -> str:
    """`"the answer" [start-end] 0.83`, or `(no answer) 0.61`."""
    if result.get("no_answer"):
        return f"(no answer) {result['score']:.2f}"
    return clip(f"\"{result['answer']}\" [{result['start']}-{result['end']}] {result['score']:.2f}")


async def answer(ctx: Any, body: QaRequest) -> QaResponse:
    model = ctx.model(body.model)
    ctx.check([item.question for item in body.items], "items", "question")
    ctx.check([item.context for item in body.items], "items", "context", document=True)
    items = [item.model_dump() for item in body.items]
    _, outputs = await ctx.infer(model, items)
    results = await ctx.offload(postprocess, outputs, model.card)
    return QaResponse(model=model.tag, results=[QaResult(**r) for r in results])


def hf_answers(windows: Any, card: Any, top_k: int, max_answer_tokens: int,
               impossible: bool) -> list[dict[str, Any]]:
    """The `top_k` best answers in the HF question-answering shape. With `impossible` (a model
    trained with unanswerable questions), the null answer comes first when the model's threshold
    says the context holds none, as `/qa` decides."""
    context: str = windows.source["context"]
    found, null = candidate_spans(windows, max_answer_tokens)
    answers = [{"answer": context[start:end], "score": prob, "start": start, "end": end}
               for _, start, end, prob in found[:top_k]]
    if impossible and unanswered(found[0][0] if found else -np.inf, null, card):
        answers = [{"answer": "", "score": answers[0]["score"] if answers else 0.0, "start": 0, "end": 0},
                   *answers][:top_k]
    return answers


def _answer_in_context(payload: dict[str, Any], answer: Any) -> str | None:
    if payload["inputs"]["context"][answer.start : answer.end] != answer.answer:
        return "the answer is not context[start:end]"
    return None


async def hf_question_answering(ctx: Any, body: hf.QuestionAnsweringRequest) -> hf.QuestionAnsweringResponse:
    params = body.parameters or hf.QuestionAnsweringParameters()
    model = ctx.model(body.model)
    card = model.card
    fixed = (("doc_stride", params.doc_stride, window_stride(card), "windows of a long context share"),
             ("max_seq_len", params.max_seq_len, card.max_length, "a window (question and context) holds"),
             ("max_question_len", params.max_question_len, max_question_tokens(card), "a question may have"))
    for name, value, ours, what in fixed:
        if value is not None and value != ours:
            hf.refuse(name, value, f"for this model {what} {ours} tokens (leave it out, or send {ours})")
    if params.align_to_words:
        hf.refuse("align_to_words", True, "answers are the model's token spans, not widened to whole words "
                  "(leave it out, or send false)")
    unanswerable = card.problem_type == WITH_UNANSWERABLE
    if params.handle_impossible_answer and not unanswerable:
        hf.refuse("handle_impossible_answer", True, "this model was trained without unanswerable questions, so "
                  "it has no null answer to give (train one on SQuAD 2.0-style data)")
    question, context = body.inputs.question, body.inputs.context
    ctx.check([question], "inputs", "question")
    ctx.check([context], "inputs", "context", document=True)
    _, outputs = await ctx.infer(model, [{"question": question, "context": context}])
    answers = await ctx.offload(hf_answers, outputs[0], card, params.top_k or 1,
                                params.max_answer_len or MAX_ANSWER_TOKENS, bool(params.handle_impossible_answer))
    if not answers:
        answers = [{"answer": "", "score": 0.0, "start": 0, "end": 0}]
    if (params.top_k or 1) == 1:
        return hf.QuestionAnsweringResponse(hf.Answer(**answers[0]))
    return hf.QuestionAnsweringResponse([hf.Answer(**a) for a in answers])


def check_answer(payload: dict[str, Any], body: Any) -> str | None:
    response, problem = validated(QaResponse, body)
    if response is None:
        return problem
    if len(response.results) != len(payload["items"]):
        return f"{len(response.results)} answers for {len(payload['items'])} items"
    for item, result in zip(payload["items"], response.results, strict=True):
        if item["context"][result.start : result.end] != result.answer:
            return "an answer is not context[start:end]"
    return None


SPEC = register(
    TaskSpec(
        name="qa",
        auto_model="AutoModelForQuestionAnswering",
        optimum_task="question-answering",
        postprocess=postprocess,
        score=score,
        primary_metric=lambda card: "f1",
        split_examples=split_examples,
        read_examples=read_examples,
        agree=agree,
        difference=difference,
        parity_measures=no_answer_changes,
        report=report,
        show_answer=show_span,
        routes=(Route("/qa", QaRequest, QaResponse, answer, exclude_none=True,
                      summary="Extractive question answering over contexts of any length up to the limit",
                      scenario=Scenario(build=lambda src: {"items": [
                          {"question": src.question(), "context": src.context()} for _ in range(src.count())]},
                          check=check_answer)),
                Route(hf.PREFIX + "/question-answering", hf.QuestionAnsweringRequest, hf.QuestionAnsweringResponse,
                      hf_question_answering, by_model=True,
                      summary="Hugging Face Inference API question-answering",
                      # checked by the image test, not in the load mix (weight 0)
                      scenario=Scenario(build=lambda src: {"inputs": {"question": src.question(),
                                                                      "context": src.context()}},
                                        check=compat_answers(hf.QuestionAnsweringResponse, lambda p: 1, _answer_in_context),
                                        weight=0))),
        request_body=lambda items: {"items": list(items)},
        client_batch_size=16,  # each item is several 384-token windows: keep one request's work moderate
        points_per_unit=1.0,
        output_name=("start_logits", "end_logits"),
        featurize=featurize,
        # a short question: a small window takes few question tokens (15 of 32), a small vocabulary
        # spells unknown words letter by letter, and a refused warm-up would stop the service starting
        warmup_inputs=({"question": "Who?", "context": "The model is warmed up before serving."},),
        max_length=384,  # a question and a part of the context (SQuAD's window)
        bench_data=("squad/dev-v1.1.json", {}),
        demo={"train": "qa/facts.jsonl", "epochs": 12, "learning_rate": 2e-4, "max_length": 128},
    )
)
