"""Shared fixtures: a tiny random BERT (no network), trained and exported once per session."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

# Before anything imports bentoml: a private model store, and never the hub. Once per session:
# `from tests.conftest import ...` runs this file a second time (as another module), and a second
# store would leave the servers the tests start looking where nothing was published.
if os.environ.get("BERTSERVE_TEST_SESSION") != str(os.getpid()):
    os.environ["BERTSERVE_TEST_SESSION"] = str(os.getpid())
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bertserve-test-bentoml-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# served: the variant export chose (model.onnx), not the fastest timed at start, which on tiny models
# is a coin toss between fp32 and int8 (tests/test_variants.py unsets it)
os.environ.setdefault("BERTSERVE_VARIANT", "export")
# one worker per `bentoml serve` the suite starts (the default is one per core): half the processes to
# start; the tests that need several workers ask for them
os.environ.setdefault("BERTSERVE_WORKERS", "1")

import pytest

POSITIVE = ["good", "great", "excellent", "love", "wonderful", "superb", "fine", "happy"]
NEGATIVE = ["bad", "awful", "terrible", "hate", "boring", "poor", "sad", "worst"]
TOPICS = ["sports", "politics", "science"]
FILLER = ["the", "a", "movie", "book", "film", "was", "is", "it", "this", "very", "really", "plot", "acting",
          "story", "and", "but", "of", "to", "in", "on", "with", "for", "at", "by", "one", "two", "time", "day",
          "game", "team", "vote", "party", "lab", "atom", "cell", "goal", "law", "gene"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# NER: single-word people and places, a two-word organisation
PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "london", "tokyo", "berlin"]
ORGS = [["acme", "corp"], ["globex", "inc"]]
QUESTION_WORDS = ["where", "did", "go", "went"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = [*rng.sample(FILLER, 4), rng.choice(POSITIVE if label == "positive" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


# multi-label topics: each text names one or two topics by two of their words
TOPIC_WORDS = {"sport": ["goal", "team", "game"], "politics": ["vote", "party", "law"],
               "science": ["atom", "cell", "gene"]}


def multi_label_rows(n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        labels = rng.sample(sorted(TOPIC_WORDS), rng.randint(1, 2))
        out.append({"text": " ".join(w for label in labels for w in rng.sample(TOPIC_WORDS[label], 2)),
                    "label": labels})
    return out


def regression_rows() -> list[dict]:
    """Texts scored by how many of their four words are "good" (0.5-4.5), twelve of each."""
    return [{"text": " ".join(["good"] * k + ["the"] * (4 - k)), "label": k + 0.5} for k in range(5)] * 12

@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with a word-level vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    letters = "abcdefghijklmnopqrstuvwxyz"
    entity_words = PEOPLE + PLACES + [w for org in ORGS for w in org] + QUESTION_WORDS
    words = sorted(set(POSITIVE + NEGATIVE + TOPICS + FILLER + entity_words) - set(letters))
    vocab = SPECIAL + words + list(letters) + [f"##{c}" for c in letters]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("sentiment")
    return {
        "train": write_jsonl(directory / "train.jsonl", sentiment_rows(240, seed=1)),
        "validation": write_jsonl(directory / "validation.jsonl", sentiment_rows(60, seed=2)),
        "test": write_jsonl(directory / "test.jsonl", sentiment_rows(60, seed=3)),
    }


def tiny_config(tiny_base: Path, train: Path, output: Path, **overrides):
    from training.config import TrainConfig

    options = dict(task="classification", train=str(train), output=str(output), base_model=str(tiny_base),
                   learning_rate=1e-3, epochs=15, batch_size=16, max_length=32, evals_per_epoch=1,
                   early_stopping_patience=10)
    options.update(overrides)
    return TrainConfig(**options)


@pytest.fixture(scope="session")
def trained_single(tiny_base, sentiment_files, tmp_path_factory) -> Path:
    from training import run_training

    output = tmp_path_factory.mktemp("trained") / "sentiment"
    run_training(tiny_config(tiny_base, sentiment_files["train"], output,
                             validation=str(sentiment_files["validation"])))
    return output


@pytest.fixture(scope="session")
def published_single(trained_single, tmp_path_factory) -> dict:
    return export_tiny(trained_single, tmp_path_factory, "tiny-sentiment")


def export_tiny(model_dir: Path, tmp_path_factory, name: str) -> dict:
    """Export and publish a tiny trained model, keeping its variants for inspection."""
    from export.pipeline import export_model

    return export_model(str(model_dir), name=name, output=str(tmp_path_factory.mktemp(f"exported-{name}") / name))


def pair_rows(n: int, seed: int) -> list[dict]:
    """Sentence pairs scored 0-5 by word overlap: learnable by a bag-of-words encoder."""
    rng = random.Random(seed)
    vocab = sorted(set(FILLER + POSITIVE + NEGATIVE + TOPICS))
    rows = []
    for _ in range(n):
        a = rng.sample(vocab, 5)
        keep = rng.randint(0, 5)
        b = a[:keep] + rng.sample([w for w in vocab if w not in a], 5 - keep)
        rng.shuffle(b)
        rows.append({"text_a": " ".join(a), "text_b": " ".join(b), "score": float(keep)})
    return rows


def cross_pair_rows(n: int, seed: int) -> list[dict]:
    """Pairs (text, text_pair) scored by the positive words of both texts together (0-4): the score
    needs both sides of the pair input."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a_pos, b_pos = rng.randint(0, 2), rng.randint(0, 2)
        a = rng.sample(FILLER, 4 - a_pos) + rng.sample(POSITIVE, a_pos)
        b = rng.sample(FILLER, 4 - b_pos) + rng.sample(POSITIVE, b_pos)
        rng.shuffle(a)
        rng.shuffle(b)
        rows.append({"text": " ".join(a), "text_pair": " ".join(b), "label": float(a_pos + b_pos) + 0.5})
    return rows


def rerank_rows(n_queries: int, seed: int) -> list[dict]:
    """(query, passage, label) rows: per query one relevant passage (it holds positive words) among
    three others (negative words)."""
    rng = random.Random(seed)
    rows = []
    for q in range(n_queries):
        query = " ".join(rng.sample(TOPICS + FILLER, 3))
        relevant = rng.randrange(4)
        for i in range(4):
            words = rng.sample(FILLER, 3) + rng.sample(POSITIVE if i == relevant else NEGATIVE, 2)
            rng.shuffle(words)
            rows.append({"query": f"{query} {q}", "passage": " ".join(words), "label": int(i == relevant)})
    return rows


@pytest.fixture(scope="session")
def trained_pairs(tiny_base, tmp_path_factory) -> Path:
    """A regression cross-encoder on pairs (`text` + `text_pair` in JSONL)."""
    from training import run_training

    directory = tmp_path_factory.mktemp("cross-pairs")
    train = write_jsonl(directory / "train.jsonl", cross_pair_rows(240, seed=6))
    validation = write_jsonl(directory / "validation.jsonl", cross_pair_rows(60, seed=7))
    output = tmp_path_factory.mktemp("trained-cross") / "cross-pairs"
    # the checkpoint kept is the lowest validation MSE: in 15 epochs the tiny head still predicts
    # about the mean (MSE 1.3, Spearman 0.9); in 25 it reaches MSE 0.06 (Spearman 0.97)
    run_training(tiny_config(tiny_base, train, output, validation=str(validation), epochs=25))
    return output


@pytest.fixture(scope="session")
def published_pairs(trained_pairs, tmp_path_factory) -> dict:
    return export_tiny(trained_pairs, tmp_path_factory, "tiny-cross-pairs")


@pytest.fixture(scope="session")
def rerank_files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("rerank")
    return {"train": write_jsonl(directory / "train.jsonl", rerank_rows(60, seed=8)),
            "validation": write_jsonl(directory / "validation.jsonl", rerank_rows(20, seed=9)),
            "test": write_jsonl(directory / "test.jsonl", rerank_rows(20, seed=10))}


@pytest.fixture(scope="session")
def trained_rerank(tiny_base, rerank_files, tmp_path_factory) -> Path:
    from training import run_training

    output = tmp_path_factory.mktemp("trained-rerank") / "rerank"
    # a 64-token window: TEI's documented /rerank example (truncate false) fits the tiny word vocabulary
    run_training(tiny_config(tiny_base, rerank_files["train"], output, task="rerank", max_length=64,
                             validation=str(rerank_files["validation"])))
    return output


@pytest.fixture(scope="session")
def published_rerank(trained_rerank, tmp_path_factory) -> dict:
    return export_tiny(trained_rerank, tmp_path_factory, "tiny-rerank")


@pytest.fixture(scope="session")
def trained_similarity(tiny_base, tmp_path_factory) -> Path:
    from training import run_training

    directory = tmp_path_factory.mktemp("pairs")
    train = write_jsonl(directory / "train.jsonl", pair_rows(240, seed=4))
    validation = write_jsonl(directory / "validation.jsonl", pair_rows(60, seed=5))
    output = tmp_path_factory.mktemp("trained-sim") / "pairs"
    run_training(tiny_config(tiny_base, train, output, task="similarity", validation=str(validation), epochs=4))
    return output


@pytest.fixture(scope="session")
def published_similarity(trained_similarity, tmp_path_factory) -> dict:
    return export_tiny(trained_similarity, tmp_path_factory, "tiny-pairs")


def ner_rows(n: int, seed: int) -> list[dict]:
    """Filler sentences with one or two entities each, as tokens and IOB2 tags."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens = rng.sample(FILLER, rng.randint(3, 9))
        tags = ["O"] * len(tokens)
        for _ in range(rng.randint(1, 2)):
            kind = rng.choice(["PER", "LOC", "ORG"])
            words = [rng.choice(PEOPLE)] if kind == "PER" else [rng.choice(PLACES)] if kind == "LOC" else rng.choice(ORGS)
            at = rng.randint(0, len(tokens))
            if 0 < at < len(tokens) and tags[at] != "O" and tags[at].startswith("I-"):
                continue  # never split an entity
            tokens[at:at] = words
            tags[at:at] = [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def write_conll(path: Path, rows: list[dict]) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for row in rows:
        lines += [f"{tok} X X {tag}" for tok, tag in zip(row["tokens"], row["tags"], strict=True)] + [""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="session")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("ner")
    return {
        "train": write_jsonl(directory / "train.jsonl", ner_rows(300, seed=6)),
        "validation": write_conll(directory / "validation.txt", ner_rows(60, seed=7)),
        "test": write_conll(directory / "test.txt", ner_rows(60, seed=8)),
    }


@pytest.fixture(scope="session")
def trained_ner(tiny_base, ner_files, tmp_path_factory) -> Path:
    from training import run_training

    output = tmp_path_factory.mktemp("trained-ner") / "ner"
    # a 16-token window: longer sentences are already cut into overlapping windows in training
    run_training(tiny_config(tiny_base, ner_files["train"], output, task="ner", max_length=16, epochs=12,
                             validation=str(ner_files["validation"])))
    return output


@pytest.fixture(scope="session")
def published_ner(trained_ner, tmp_path_factory) -> dict:
    return export_tiny(trained_ner, tmp_path_factory, "tiny-ner")


def qa_rows(n: int, seed: int, min_words: int = 4, max_words: int = 40) -> list[dict]:
    """"where did X go" over filler with "X went to PLACE" somewhere in it: the answer is PLACE."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        before = " ".join(rng.choices(FILLER, k=rng.randint(0, max_words)))
        after = " ".join(rng.choices(FILLER, k=rng.randint(min_words, max_words)))
        context = " ".join(x for x in (before, f"{person} went to", place, after) if x)
        start = context.index(f"{person} went to ") + len(f"{person} went to ")
        rows.append({"id": str(i), "question": f"where did {person} go", "context": context,
                     "answers": {"text": [place], "answer_start": [start]}})
    return rows


@pytest.fixture(scope="session")
def qa_files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("qa")
    return {"train": write_jsonl(directory / "train.jsonl", qa_rows(400, seed=9)),
            "validation": write_jsonl(directory / "validation.jsonl", qa_rows(60, seed=10))}


@pytest.fixture(scope="session")
def trained_qa(tiny_base, qa_files, tmp_path_factory) -> Path:
    from training import run_training

    output = tmp_path_factory.mktemp("trained-qa") / "qa"
    # a 32-token window: most contexts are read in several windows already in training
    run_training(tiny_config(tiny_base, qa_files["train"], output, task="qa", max_length=32, epochs=12,
                             validation=str(qa_files["validation"])))
    return output


@pytest.fixture(scope="session")
def published_qa(trained_qa, tmp_path_factory) -> dict:
    return export_tiny(trained_qa, tmp_path_factory, "tiny-qa")


@pytest.fixture(scope="session")
def service_client(published_single, published_similarity, published_ner, published_qa, published_pairs,
                   published_rerank):
    """The real BentoML service, in process, over HTTP (ASGI), serving the published tiny models;
    the pair cross-encoder is a second classification model, named `pairs`."""
    from starlette.testclient import TestClient

    from service import BertServe
    from service.service import SETTINGS

    # pin the tags: other tests publish more models (the demo ones) while this client lives
    os.environ["BERTSERVE_MODEL_CLASSIFICATION"] = published_single["tag"]
    os.environ["BERTSERVE_MODEL_SIMILARITY"] = published_similarity["tag"]
    os.environ["BERTSERVE_MODEL_NER"] = published_ner["tag"]
    os.environ["BERTSERVE_MODEL_QA"] = published_qa["tag"]
    os.environ["BERTSERVE_MODEL_RERANK"] = published_rerank["tag"]
    saved, SETTINGS.models = SETTINGS.models, f"pairs={published_pairs['tag']}"
    # the suite's process is not a worker: its heap is not frozen (tests/test_heap.py covers that)
    freeze, SETTINGS.gc_freeze = SETTINGS.gc_freeze, False
    try:
        with TestClient(BertServe.to_asgi(), raise_server_exceptions=False) as client:
            SETTINGS.models = saved  # read once, when the models load
            yield client
    finally:
        SETTINGS.models = saved
        SETTINGS.gc_freeze = freeze


@pytest.fixture()
def service_instance(service_client):
    from _bentoml_sdk.service import get_current_service

    return get_current_service()


@pytest.fixture()
def limits(service_instance):
    """Tighten limits for one test; the instance's settings are what the handlers read."""
    settings = service_instance.settings
    saved = settings.model_copy()

    def tighten(**values):
        for key, value in values.items():
            setattr(settings, key, value)

    yield tighten
    for key in type(settings).model_fields:
        setattr(settings, key, getattr(saved, key))


# --- the BERT family: tiny random encoders of other architectures and tokenizers --------------

FAMILIES = ("distilbert", "roberta", "electra", "deberta-v2")


def family_corpus() -> list[str]:
    """Every sentence shape the fixtures make, for training the BPE / Unigram tokenizers."""
    rows = sentiment_rows(200, seed=11)
    text = [r["text"] for r in rows]
    text += [" ".join(r["tokens"]) for r in ner_rows(200, seed=12)]
    text += [f"{r['question']} {r['context']}" for r in qa_rows(200, seed=13)]
    text += [" ".join(TOPICS + PEOPLE + PLACES + [w for org in ORGS for w in org] + QUESTION_WORDS)] * 5
    return text


def split_word(word: str) -> tuple[str, str]:
    """An entity word in two pieces, so that entities are several sub-tokens in some families."""
    half = (len(word) + 1) // 2
    return word[:half], word[half:]


def unigram_tokenizer(specials: list[str]):
    """A SentencePiece-style Unigram model (`tokenizers`, no sentencepiece file): lower case, `▁`
    before each word, and a `▁word` token's offsets cover the space before it. Most words are one
    piece `▁word`; people are a bare `▁` and two pieces (`▁` `ali` `ce`: mid-text the bare `▁` is
    only the space), places two pieces (`▁par` `is`); single letters spell the rest."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    words = sorted({w for line in family_corpus() for w in line.split()})
    pieces: dict[str, float] = {"▁": -3.0}
    for word in words:
        head, tail = split_word(word)
        if word in PEOPLE:
            pieces.update({head: -2.0, tail: -2.0})
        elif word in PLACES:
            pieces.update({f"▁{head}": -2.0, tail: -2.0})
        else:
            pieces[f"▁{word}"] = -1.0
    pieces.update({c: -6.0 for c in "abcdefghijklmnopqrstuvwxyz0123456789"})
    vocab = [(token, 0.0) for token in specials] + sorted(pieces.items())
    uni = Tokenizer(models.Unigram(vocab, unk_id=specials.index("[UNK]"), byte_fallback=False))
    uni.normalizer = normalizers.Lowercase()
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    cls_id, sep_id = specials.index("[CLS]"), specials.index("[SEP]")
    uni.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return uni


def build_family_base(directory: Path, family: str) -> Path:
    """A randomly initialised 2-layer encoder (hidden 32) of `family` with its own kind of tokenizer:
    DistilBERT (WordPiece, no segment ids, `dim`/`n_layers` config names), RoBERTa (byte-level BPE,
    leading-space tokens, position ids offset by the padding index), ELECTRA (WordPiece with places
    split into `##` pieces, separate embedding size), DeBERTa-v2 (a SentencePiece-style Unigram
    model built with `tokenizers`, relative attention, no segment embeddings)."""
    import torch
    import transformers as tf

    directory.mkdir(parents=True, exist_ok=True)
    corpus = family_corpus()
    letters = "abcdefghijklmnopqrstuvwxyz"
    if family in ("distilbert", "electra"):
        words = sorted({w for line in corpus for w in line.split()} - set(letters))
        if family == "electra":  # places as word pieces: "paris" -> "par", "##is"
            words = sorted((set(words) - set(PLACES)) | {split_word(p)[0] for p in PLACES}
                           | {"##" + split_word(p)[1] for p in PLACES})
        vocab = SPECIAL + words + list(letters) + [f"##{c}" for c in letters]
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
        cls = tf.DistilBertTokenizerFast if family == "distilbert" else tf.ElectraTokenizerFast
        tokenizer = cls(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
        size = len(vocab)
    elif family == "roberta":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(str(directory))
        tokenizer = tf.RobertaTokenizerFast(vocab_file=str(directory / "vocab.json"),
                                            merges_file=str(directory / "merges.txt"))
        (directory / "vocab.json").unlink()
        (directory / "merges.txt").unlink()
        size = len(tokenizer)
    elif family == "deberta-v2":
        specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
        uni = unigram_tokenizer(specials)
        tokenizer = tf.DebertaV2TokenizerFast(tokenizer_object=uni, pad_token="[PAD]", cls_token="[CLS]",
                                              sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]",
                                              bos_token="[CLS]", eos_token="[SEP]")
        size = uni.get_vocab_size()
    else:
        raise ValueError(family)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    common = dict(vocab_size=size, max_position_embeddings=128)
    if family == "distilbert":
        model = tf.DistilBertModel(tf.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common))
    elif family == "roberta":
        model = tf.RobertaModel(tf.RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
            **{**common, "max_position_embeddings": 130}))
    elif family == "electra":
        model = tf.ElectraModel(tf.ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64, **common))
    else:
        model = tf.DebertaV2Model(tf.DebertaV2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            relative_attention=True, position_buckets=32, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
            position_biased_input=False, type_vocab_size=0, pad_token_id=tokenizer.pad_token_id, **common))
    model.save_pretrained(directory, safe_serialization=True)
    return directory
