"""The BERT family, not only BERT: DistilBERT, RoBERTa, ELECTRA and DeBERTa-v2, each a tiny random
encoder with its own kind of tokenizer (`conftest.build_family_base`: WordPiece, byte-level BPE,
WordPiece with `##` pieces, a SentencePiece-style Unigram model).

First the cheap checks, on the tokenizers alone: texts and pairs encode for serving as for
training, NER and QA labels round-trip through the one post-processing to the exact character
spans (leading-space tokens included), the null (CLS) token is found where the tokenizer puts it,
`--max-length` is checked against the positions a model has, the bench counts FLOPs from each
config. Then the matrix: each family trained, exported through the parity gate and served for
classification, NER and QA, and a RoBERTa sentence model with its own (max) pooling for
similarity, all from one `bentoml serve` (a CLS-pooling base is checked into the ONNX graph
apart: a tiny random model's CLS vectors are all alike, too alike for the gate's Spearman).
"""

from __future__ import annotations

import json
import random
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertserve.artifact import ModelCard, read_card
from bertserve.errors import ConfigError
from bertserve.registry import get_task, tasks
from bertserve.runtime import Pipeline, TextEncoder, Windows
from bertserve.store import resolve
from bertserve.tasks import ner, qa
from tests.conftest import (
    FAMILIES,
    FILLER,
    ORGS,
    build_family_base,
    export_tiny,
    ner_rows,
    pair_rows,
    qa_rows,
    sentiment_rows,
    tiny_config,
    write_conll,
    write_jsonl,
)
from tests.test_ner import oracle_outputs
from tests.test_qa import oracle

TOKENIZER_KIND = {"distilbert": "WordPiece", "roberta": "BPE", "electra": "WordPiece", "deberta-v2": "Unigram"}
# RoBERTa's tokenizer with offsets that keep the space of a `Ġword` token (trim_offsets off, as
# byte-level BPE tokenizers other than RoBERTa's own ship)
UNTRIMMED = "roberta-untrimmed"


@pytest.fixture(scope="session")
def family_bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: build_family_base(root / family, family) for family in FAMILIES}


def tokenizer_file(family_bases: dict[str, Path], family: str, tmp_path: Path) -> Path:
    if family != UNTRIMMED:
        return family_bases[family] / "tokenizer.json"
    spec = json.loads((family_bases["roberta"] / "tokenizer.json").read_text())
    assert spec["post_processor"]["type"] == "RobertaProcessing"
    spec["post_processor"]["trim_offsets"] = False
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    return path


def test_each_family_has_its_own_tokenizer_and_config_names(family_bases):
    for family, base in family_bases.items():
        spec = json.loads((base / "tokenizer.json").read_text())
        config = json.loads((base / "config.json").read_text())
        assert spec["model"]["type"] == TOKENIZER_KIND[family], family
        assert config["model_type"] == family and config["dim" if family == "distilbert" else "hidden_size"] == 32
    assert "hidden_size" not in json.loads((family_bases["distilbert"] / "config.json").read_text())
    # the leading-space tokens the alignment has to cope with
    for family, marker in (("roberta", "Ġ"), ("deberta-v2", "▁")):
        tokens = TextEncoder(family_bases[family] / "tokenizer.json", 64).encode(["bob went to paris"])[0]
        assert any(t.startswith(marker) for t in tokens.encoding.tokens), (family, tokens.encoding.tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_served_encodings_are_the_ones_training_reads(family_bases, family):
    """Texts and pairs (RoBERTa's `<s> a </s></s> b </s>`, DeBERTa's `[CLS] a [SEP] b [SEP]`), cut
    longest side first: the service's encoder gives the ids transformers' tokenizer gives training,
    and segment ids only to a model whose tokenizer names them as an input."""
    from training.common import load_tokenizer

    tokenizer = load_tokenizer(str(family_bases[family]))
    encoder = TextEncoder(family_bases[family] / "tokenizer.json", 12)
    texts = ["bob went to paris", "  the plot was awful and the acting was worse than the story "]
    pairs = [("where did bob go", "bob went to paris"), (texts[1], "a good film"), (texts[1], texts[1])]
    for inputs in (texts, pairs):
        served = encoder.encode(inputs)
        first = [x if isinstance(x, str) else x[0] for x in inputs]
        second = None if inputs is texts else [x[1] for x in inputs]
        trained = tokenizer(first, second, truncation="longest_first", max_length=12)
        assert [s.encoding.ids for s in served] == trained["input_ids"], family
        if "token_type_ids" in trained:
            assert [s.encoding.type_ids for s in served] == trained["token_type_ids"], family
    assert ("token_type_ids" in tokenizer.model_input_names) == (family in ("electra", "deberta-v2"))


# --- sub-word alignment: labels -> logits -> the one post-processing -> the gold spans -------------


def spaced(tokens: list[str], tags: list[str], gaps: list[str]) -> dict[str, Any]:
    """A text from words joined by `gaps` (gaps[0] leads, gaps[-1] trails), with its entities."""
    text, starts = gaps[0], []
    for i, word in enumerate(tokens):
        starts.append(len(text))
        text += word + gaps[i + 1]
    entities = [{"start": starts[first], "end": starts[last - 1] + len(tokens[last - 1]), "label": kind}
                for first, last, kind in ner.spans_from_tags(tags)]
    return {"text": text, "entities": entities}


def ner_examples() -> list[dict[str, Any]]:
    rng = random.Random(3)
    examples = []
    for row in ner_rows(40, seed=31):
        n = len(row["tokens"])
        gaps = [""] + [" "] * (n - 1) + [""] if rng.random() < 0.5 else [
            rng.choice(["", " ", "  "]) for _ in range(n + 1)]
        gaps[1:-1] = [g or " " for g in gaps[1:-1]]
        examples.append(spaced(row["tokens"], row["tags"], gaps))
    long_tokens = [*rng.choices(FILLER, k=120), "bob", "went", "to", "paris", "with", *ORGS[0]]
    tags = ["O"] * 120 + ["B-PER", "O", "O", "B-LOC", "O", "B-ORG", "I-ORG"]
    examples.append(spaced(long_tokens, tags, [""] + [" "] * (len(long_tokens) - 1) + [""]))
    return examples


@pytest.mark.parametrize("family", [*FAMILIES, UNTRIMMED])
def test_ner_labels_decode_to_the_exact_entity_spans(family_bases, family, tmp_path):
    examples = ner_examples()
    card = ModelCard(task="ner", labels=ner.bio_labels(["PER", "LOC", "ORG"]), max_length=12)
    encoder = TextEncoder(tokenizer_file(family_bases, family, tmp_path), card.max_length)
    outputs = oracle_outputs(encoder, examples, card)
    assert len(outputs[-1].items) > 10  # the long text really was windowed
    results = ner.postprocess(outputs, card)
    for ex, result in zip(examples, results, strict=True):
        assert ner.as_spans(result["entities"]) == ner.as_spans(ex["entities"]), ex["text"]
        assert all(e["word"] == ex["text"][e["start"] : e["end"]] == e["word"].strip() for e in result["entities"])


def qa_examples() -> list[dict[str, Any]]:
    """Contexts as the fixtures write them, and the same with extra spaces around every word."""
    examples = []
    for row in qa_rows(30, seed=32, max_words=20):
        examples.append({**row, "answers": [{"text": row["answers"]["text"][0],
                                              "start": row["answers"]["answer_start"][0]}]})
        context = "  " + row["context"].replace(" ", "  ") + " "
        person = row["question"].split()[2]
        start = context.index(f"{person}  went  to  ") + len(f"{person}  went  to  ")
        place = row["answers"]["text"][0]
        assert context[start : start + len(place)] == place
        examples.append({**row, "context": context, "answers": [{"text": place, "start": start}]})
    return examples


@pytest.mark.parametrize("family", [*FAMILIES, UNTRIMMED])
def test_qa_labels_decode_to_the_exact_answer(family_bases, family, tmp_path):
    examples = qa_examples()
    card = ModelCard(task="qa", max_length=40)
    encoder = TextEncoder(tokenizer_file(family_bases, family, tmp_path), card.max_length)
    outputs = oracle(encoder, examples, card)
    assert max(len(w.items) for w in outputs) > 1  # long contexts really were windowed
    for ex, result in zip(examples, qa.postprocess(outputs, card), strict=True):
        assert result["answer"] == ex["answers"][0]["text"], (family, ex["context"])
        assert ex["context"][result["start"] : result["end"]] == result["answer"]


def test_the_null_answer_sits_on_the_tokenizers_own_cls_token(family_bases):
    """RoBERTa's `<s>` leads its windows (`<s> q </s></s> c </s>`); an XLNet-style template puts the
    classification token last: the null score and the null label follow it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from training.qa import answer_positions

    roberta = TextEncoder(family_bases["roberta"] / "tokenizer.json", 32)
    window = roberta.windows(["alice went to paris"], 8, questions=["where did alice go"])[0][0]
    assert window.encoding.tokens[0] == "<s>" and qa.null_position(window.encoding) == 0

    vocab = {w: i for i, w in enumerate(["<unk>", "<sep>", "<cls>", "where", "did", "alice", "go", "went", "to",
                                         "paris"])}
    tail = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tail.pre_tokenizer = pre_tokenizers.Whitespace()
    tail.post_processor = processors.TemplateProcessing(
        single="$A <sep> <cls>", pair="$A <sep> $B:1 <sep>:1 <cls>:2", special_tokens=[("<sep>", 1), ("<cls>", 2)])
    encoder = TextEncoder(tail, 32)
    item = encoder.windows(["alice went to paris"], 8, questions=["where did alice go"])[0][0]
    last = item.n_tokens - 1
    assert item.encoding.tokens[last] == "<cls>" and qa.null_position(item.encoding) == last
    assert answer_positions(item, None) == (last, last)
    row = np.full((item.n_tokens, 2), -5.0)
    row[last] = 4.0  # the null token, last
    row[0] = 3.0  # "where", the question's first token: not the null token here
    _, null, *_ = qa.best_span(Windows({"question": "where did alice go", "context": "alice went to paris"},
                                       [item], [row]))
    assert null == 8.0


# --- limits, FLOPs ----------------------------------------------------------------------------


def test_max_length_is_checked_against_the_position_embeddings(family_bases, tmp_path):
    from training.config import TrainConfig, position_limit

    roberta = str(family_bases["roberta"])
    # 130 positions, numbered after the padding index (1): 128 tokens
    assert position_limit(roberta) == 128
    assert position_limit(str(family_bases["distilbert"])) == 128
    assert position_limit(str(family_bases["deberta-v2"])) is None  # relative positions only
    assert position_limit(str(tmp_path / "not-here")) is None

    def config(base: str, **options: Any) -> TrainConfig:
        return TrainConfig(task="qa", train="train.jsonl", output=str(tmp_path / "out"), base_model=base, **options)

    with pytest.raises(ConfigError, match=r"--max-length 129 is longer than .* 128 positions .* --max-length 128"):
        config(roberta, max_length=129)
    assert config(roberta, max_length=128).max_length == 128
    assert config(roberta).max_length == 128  # QA's default window (384) lowered to fit
    assert config(str(family_bases["deberta-v2"]), max_length=512).max_length == 512


def test_bench_counts_flops_from_every_familys_config(family_bases):
    from export.bench import encoder_flops

    bert_style = encoder_flops({"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64}, 10)
    for family, base in family_bases.items():
        assert encoder_flops(json.loads((base / "config.json").read_text()), 10) == bert_style, family
    with pytest.raises(ConfigError, match="width or depth"):
        encoder_flops({"model_type": "mystery", "width": 32}, 10)


# --- the matrix: train -> export (gate) -> one `bentoml serve` ---------------------------------

MATRIX = [(family, task) for family in FAMILIES for task in ("classification", "ner", "qa")]
MATRIX.append(("roberta", "similarity"))
# (train rows, validation rows, training options, the least validation score): the BERT fixtures'
# data and schedule, QA with short contexts; each cell trains in a few seconds on one thread
ROWS = {"classification": lambda n, seed: sentiment_rows(n, seed),
        "ner": lambda n, seed: ner_rows(n, seed),
        "qa": lambda n, seed: qa_rows(n, seed, max_words=8),
        "similarity": lambda n, seed: pair_rows(n, seed)}
TRAINING: dict[str, tuple[int, int, dict[str, Any], float]] = {
    "classification": (240, 40, {"max_length": 16, "epochs": 15}, 0.9),
    "ner": (300, 40, {"max_length": 16, "epochs": 12}, 0.8),
    "qa": (200, 40, {"max_length": 32, "epochs": 12}, 80.0),
    "similarity": (240, 40, {"max_length": 16, "epochs": 15}, 0.4),
}
SERVED_INPUTS: dict[str, list[Any]] = {
    "classification": ["a really great movie", "  the plot was awful  ", "boring"],
    "ner": ["alice went to paris with acme corp", "  bob  met carol in   tokyo ",
            " ".join(random.Random(5).choices(FILLER, k=40)) + " dave went to berlin with globex inc"],
    "qa": [{"question": "where did dave go", "context": "the day was fine and dave went to berlin with the team"},
           {"question": "where did alice go", "context": "  alice  went to  london  and the film was good "}],
    "similarity": ["a good film", "  the team won the game ", "sad plot"],
}


def cell_name(family: str, task: str) -> str:
    return f"{family}-{task}"


@pytest.fixture(scope="session")
def family_data(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("family-data")
    files = {}
    for task, (n_train, n_val, _, _) in TRAINING.items():
        validation = ROWS[task](n_val, 42)
        files[task] = (write_jsonl(directory / f"{task}-train.jsonl", ROWS[task](n_train, 41)),
                       write_conll(directory / f"{task}-val.txt", validation) if task == "ner"
                       else write_jsonl(directory / f"{task}-val.jsonl", validation))
    return files


def sentence_base(base: Path, out: Path, pooling: str) -> Path:
    """`base` as a sentence-transformers model with its own pooling and a final Normalize."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(base), max_seq_length=64, model_kwargs={"use_safetensors": True})
    modules = [transformer, models.Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling),
               models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def family_models(family_bases, family_data, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Every cell of the matrix trained and exported (published): what export returned, or the
    error that stopped the cell (each cell's test reports its own). The similarity cell starts
    from a sentence-transformers model pooling with max (not the mean a plain encoder gets)."""
    import torch

    from training import run_training

    root = tmp_path_factory.mktemp("family-models")
    cells: dict[str, dict[str, Any]] = {}
    threads = torch.get_num_threads()
    # tiny models: a second thread only waits for the first, and on a busy machine for the scheduler
    torch.set_num_threads(1)
    try:
        for family, task in MATRIX:
            name = cell_name(family, task)
            try:
                base = family_bases[family]
                if task == "similarity":
                    base = sentence_base(base, root / f"{family}-sentence-base", pooling="max")
                train, validation = family_data[task]
                started = time.perf_counter()
                card = run_training(tiny_config(base, train, root / name, task=task, validation=str(validation),
                                                **TRAINING[task][2]))
                trained = time.perf_counter()
                result = export_tiny(root / name, tmp_path_factory, name)
                cells[name] = {**result, "model_dir": root / name, "metrics": card.metrics,
                               "train_s": round(trained - started, 1),
                               "export_s": round(time.perf_counter() - trained, 1)}
            except Exception:
                cells[name] = {"error": traceback.format_exc()}
    finally:
        torch.set_num_threads(threads)
    return cells


@pytest.fixture(scope="module")
def family_server(family_models, tmp_path_factory):
    """One `bentoml serve` for every cell that exported, each model under its cell's name."""
    from tests.test_serve_process import start_serve, stop_serve

    models = ",".join(f"{name}={cell['tag']}" for name, cell in family_models.items() if "tag" in cell)
    no_task_defaults = {f"BERTSERVE_MODEL_{t.upper()}": "" for t in tasks()}
    url, proc = start_serve(tmp_path_factory.mktemp("family-serve"), BERTSERVE_MODELS=models,
                            BERTSERVE_SHUTDOWN_DRAIN_S="0", **no_task_defaults)
    yield url
    stop_serve(proc)


@pytest.mark.parametrize("family, task", MATRIX, ids=[cell_name(f, t) for f, t in MATRIX])
def test_family_trains_exports_through_the_gate_and_serves(family_models, family_server, family, task):
    from bertserve.client import ServiceClient

    cell = family_models[cell_name(family, task)]
    if "error" in cell:
        pytest.fail(f"{cell_name(family, task)} did not train and export:\n{cell['error']}")
    spec = get_task(task)
    card = read_card(cell["model_dir"])
    # it learned: the labels sit on the tokens the service reads
    assert card.metrics[card.primary_metric] >= TRAINING[task][3], card.metrics
    # the gate passed: the published variant answers as PyTorch does
    assert cell["parity"][cell["variant"]]["passed"] and cell["parity"][cell["variant"]]["agreement"] == 1.0

    inputs = SERVED_INPUTS[task]
    _, path, published = resolve(task, cell["tag"])
    expected = Pipeline.from_artifact(path, published).predict(inputs)
    served = ServiceClient(family_server).predict(task, inputs, model=cell_name(family, task))
    assert len(served) == len(expected)
    assert all(spec.agree(x, y) for x, y in zip(expected, served, strict=True)), (served, expected)
    for item, result in zip(inputs, served, strict=True):
        if task == "ner":
            assert result["entities"]
            for entity in result["entities"]:
                assert entity["word"] == item[entity["start"] : entity["end"]] == entity["word"].strip()
        if task == "qa":
            assert result["answer"] == item["context"][result["start"] : result["end"]] == result["answer"].strip()
            assert result["answer"]


def test_similarity_keeps_the_base_models_own_pooling(family_models, family_server):
    """The RoBERTa sentence model pools with max (its modules.json): training keeps it, dropping the
    final Normalize (the service normalizes), the card records it and TEI's /info names it."""
    import httpx

    cell = family_models[cell_name("roberta", "similarity")]
    if "error" in cell:
        pytest.fail(cell["error"])
    model_dir = cell["model_dir"]
    modules = [m["type"] for m in json.loads((model_dir / "modules.json").read_text())]
    assert modules[-1].endswith("Pooling") and not any(m.endswith("Normalize") for m in modules)
    assert json.loads(next(model_dir.glob("*Pooling/config.json")).read_text())["pooling_mode"] == "max"
    assert read_card(model_dir).training["pooling"] == "max"
    info = httpx.get(f"{family_server}/tei/info", timeout=10).json()
    assert info["model_type"] == {"embedding": {"pooling": "max"}}


def test_a_cls_pooling_base_keeps_cls_into_the_onnx_graph(family_bases, tmp_path):
    """A BGE-style base (CLS pooling, Normalize): the bi-encoder keeps CLS, and the exported graph's
    sentence embedding is the first token's vector."""
    import onnxruntime as ort
    import torch

    from export.onnx import export_fp32
    from training.similarity import build_model, pooling_mode

    base = sentence_base(family_bases["roberta"], tmp_path / "bge-style", pooling="cls")
    model = build_model(str(base), 16)
    assert pooling_mode(model) == "cls" and len(list(model)) == 2  # Transformer, Pooling: no Normalize
    model.save(str(tmp_path / "model"), safe_serialization=True)
    onnx_file = export_fp32(tmp_path / "model", tmp_path / "onnx", "feature-extraction")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    features = model.preprocess(["bob went to paris", "a good film"])
    feeds = {i.name: features[i.name].numpy() for i in session.get_inputs()}
    tokens, sentences = (session.run([name], feeds)[0] for name in ("token_embeddings", "sentence_embedding"))
    np.testing.assert_allclose(sentences, tokens[:, 0], atol=1e-6)
    with torch.inference_mode():
        np.testing.assert_allclose(sentences, model.encode(["bob went to paris", "a good film"]), atol=1e-4)


def test_served_families_are_listed_with_their_tasks(family_models, family_server):
    import httpx

    served = httpx.get(f"{family_server}/info", timeout=10).json()["models"]
    assert {name: m["task"] for name, m in served.items()} == {
        cell_name(f, t): t for f, t in MATRIX if "tag" in family_models[cell_name(f, t)]}
