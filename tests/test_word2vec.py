"""word2vec: corpus and vocabulary in Spark, 2 Horovod ranks training, evaluation, scoring."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.errors import ConfigError, SourceError
from lakehouse.featuresets import build_features
from models import tracking
from models.runner import train
from models.scoring import score
from models.word2vec.evaluate import Embeddings
from models.word2vec.pairs import cbow_windows, keep_probability, skipgram_pairs
from tests.helpers import silver_spec, with_datasets

TOPICS = {
    "animals": ["cat", "dog", "horse", "cow", "sheep", "goat", "mouse", "rabbit"],
    "colours": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"],
    "tools": ["hammer", "saw", "drill", "wrench", "chisel", "pliers", "shovel", "rake"],
}
FILLER = ["the", "and", "a"]
SMALL = {"dim": 16, "window": 3, "negative": 4, "sample": 0.0, "alpha": 0.05, "epochs": 8,
         "batch_pairs": 64, "block_batches": 4, "sync_words": 300, "neighbours": 4}


def _documents(n_docs: int = 90, length: int = 60) -> list[tuple[str, str, str, str]]:
    """Documents each about one topic: its words mixed with filler words."""
    rng = np.random.default_rng(3)
    names = list(TOPICS)
    docs = []
    for i in range(n_docs):
        topic = TOPICS[names[i % 3]]
        words = [topic[j] if rng.random() < 0.75 else FILLER[j % 3]
                 for j in rng.integers(0, len(topic), length)]
        rare = "rare" + chr(97 + i % 26) + chr(97 + i // 26)     # seen once: below min_count
        text = " ".join(words).capitalize() + f". Don't stop; it's 42 {rare}."
        docs.append(("synthetic" if i % 2 else "other", f"d{i}", f"doc {i}", text))
    return docs


def _write_documents(spark, cfg, docs) -> None:
    spec = silver_spec(spark, cfg, "enwiki")
    target = delta.ensure_table(spark, spec, cfg.catalog.database)
    spark.createDataFrame(docs, spec.schema).write.format("delta").mode("append") \
        .saveAsTable(target)


@pytest.fixture
def corpus(spark, cfg):
    docs = _documents()
    _write_documents(spark, cfg, docs)
    return docs, build_features(spark, cfg, "corpus",
                                params={"min_count": 2, "max_sentence_length": 25})


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)*", text.lower())


def test_vocabulary_ids_counts_and_sentences(spark, cfg, corpus):
    docs, built = corpus
    expected = Counter(t for d in docs for t in _tokens(d[3]))
    kept = {w: c for w, c in expected.items() if c >= 2}
    vocab = spark.table(f"{cfg.catalog.database}.gold_word2vec_vocab").orderBy("word_id") \
        .toPandas()
    assert dict(zip(vocab.word, vocab["count"], strict=True)) == kept
    assert list(vocab.word_id) == list(range(len(kept)))
    assert list(vocab["count"]) == sorted(vocab["count"], reverse=True)
    assert "don't" in kept and "it's" in kept
    assert not any(w.startswith("rare") or w.isdigit() for w in vocab.word)
    assert built.n_features == len(kept)

    gold = spark.table(built.table)
    assert {r["split"] for r in gold.select("split").distinct().collect()} == {"train"}
    lengths = [r["n"] for r in gold.select(F.size("tokens").alias("n")).collect()]
    assert max(lengths) == 25 and min(lengths) >= 1
    assert sum(lengths) == sum(kept.get(t, 0) > 0 for d in docs for t in _tokens(d[3]))
    assert len(gold.inputFiles()) >= 2 * cfg.train.num_proc
    # Sentences hold the document's in-vocabulary words in order.
    ids = dict(zip(vocab.word, vocab.word_id, strict=True))
    firsts = {tuple(r["tokens"]) for r in gold.collect()}
    doc0 = [ids[t] for t in _tokens(docs[0][3]) if t in ids]
    assert tuple(doc0[:25]) in firsts and tuple(doc0[25:50]) in firsts

    again = build_features(spark, cfg, "corpus",
                           params={"min_count": 2, "max_sentence_length": 25})
    assert again.version == built.version            # same silver version and params
    other = build_features(spark, cfg, "corpus", params={"min_count": 2, "corpora": "other"})
    assert other.version == built.version + 1
    assert other.rows == 45                          # one sentence per 'other' document


def test_empty_corpus_names_table_and_min_count(spark, cfg):
    _write_documents(spark, cfg, _documents(n_docs=3, length=5))
    with pytest.raises(SourceError, match=r"silver_documents .*min_count=1000"):
        build_features(spark, cfg, "corpus", params={"min_count": 1000})


def test_windows_stay_inside_sentences():
    rng = np.random.default_rng(0)
    ids = np.arange(20, dtype=np.int32)                 # id = position: pairs show offsets
    sent = np.repeat(np.arange(2, dtype=np.int32), 10)
    x, y = skipgram_pairs(ids, sent, 3, rng)
    assert np.all(x // 10 == y // 10) and np.all(np.abs(x - y).clip(0) <= 3)
    assert np.all(x != y) and int((np.abs(x - y) == 1).sum()) == 36   # reach is never < 1
    assert 36 < len(x) < 2 * (9 + 8 + 7) * 2                         # windows are shrunk
    contexts, centres = cbow_windows(ids, sent, 2, rng)
    assert contexts.shape == (20, 4) and np.all((contexts >= 0).sum(axis=1) >= 1)
    valid = contexts >= 0
    assert np.all((contexts // 10 == centres[:, None] // 10) | ~valid)
    keep = keep_probability(np.array([1000, 10, 1]), 1e-2)
    assert keep[0] < keep[1] <= keep[2] == 1.0


def _similarity_tables(spark, cfg) -> None:
    sim = silver_spec(spark, cfg, "wordsim353")
    rows = [("wordsim353", a, b, s) for a, b, s in [
        ("cat", "dog", 9.0), ("red", "blue", 8.5), ("saw", "drill", 8.0), ("cow", "goat", 8.2),
        ("cat", "red", 1.0), ("dog", "hammer", 0.5), ("blue", "rake", 1.5),
        ("green", "horse", 0.8), ("unicorn", "cat", 5.0)]]
    target = delta.ensure_table(spark, sim, cfg.catalog.database)
    spark.createDataFrame(rows, sim.schema).write.format("delta").mode("append") \
        .saveAsTable(target)
    ana = silver_spec(spark, cfg, "analogies")
    questions = [(1, "s", "cat", "dog", "red", "blue"), (2, "s", "Cat", "Dog", "Cow", "Goat"),
                 (3, "s", "cat", "unicorn", "red", "blue")]
    target = delta.ensure_table(spark, ana, cfg.catalog.database)
    spark.createDataFrame(questions, ana.schema).write.format("delta").mode("append") \
        .saveAsTable(target)


TICKETS = {"tickets": {
    "kind": "text", "roles": {"id": "ticket_id", "text": "body"},
    "source": {"files": "/landing/tickets/*.json", "format": "json",
               "schema": "ticket_id BIGINT NOT NULL, body STRING"},
    "silver": {"keys": ["ticket_id"]},
    "features": {"min_count": 2, "max_sentence_length": 25}}}


@pytest.fixture
def tickets(spark, cfg):
    """A text data set the test declares (its own silver table, its own id and text)."""
    cfg = with_datasets(cfg, TICKETS)
    spec = silver_spec(spark, cfg, "tickets")
    target = delta.ensure_table(spark, spec, cfg.catalog.database)
    spark.createDataFrame([(i, text) for i, (_, _, _, text) in enumerate(_documents())],
                          spec.schema).write.format("delta").mode("append").saveAsTable(target)
    return cfg


def test_declared_text_builds_its_own_tables_and_checks_settings(spark, tickets):
    built = build_features(spark, tickets, "tickets")
    db = tickets.catalog.database
    assert built.table == f"{db}.gold_word2vec_corpus_tickets"
    vocab = {r["word"] for r in spark.table(f"{db}.gold_word2vec_vocab_tickets").collect()}
    assert set(TOPICS["animals"]) <= vocab and "stop" in vocab and "rareaa" not in vocab
    assert spark.table(built.table).agg(F.max(F.size("tokens"))).first()[0] == 25
    with pytest.raises(ConfigError, match="unknown parameter.*corpora"):
        build_features(spark, tickets, "tickets", params={"corpora": "x"})
    bad = with_datasets(tickets, {"tickets": {**TICKETS["tickets"], "features": {
        "min_count": "two"}}})
    with pytest.raises(ConfigError, match="datasets.tickets.features.min_count: 'two'"):
        build_features(spark, bad, "tickets")


@pytest.mark.slow
def test_two_ranks_learn_topics_register_and_score(spark, tickets, monkeypatch):
    """word2vec on a text data set the test declares."""
    cfg = tickets
    _similarity_tables(spark, cfg)
    build_features(spark, cfg, "tickets")
    result = train(spark, cfg, "word2vec", "tickets", params=SMALL)
    ranks = sorted(result.ranks, key=lambda r: r["rank"])
    assert [(r["rank"], r["size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["digest"] == ranks[1]["digest"]            # identical final matrices
    assert all(r["words"] > 0 for r in ranks)                  # each rank had a shard
    assert result.history["loss"][-1] < result.history["loss"][0]

    model = result.model
    metrics = model.metrics
    assert metrics["epochs"] == 8 and metrics["words_per_second"] > 0
    assert metrics["wordsim353_coverage"] == pytest.approx(8 / 9)
    assert metrics["wordsim353_spearman"] > 0.5                # topic pairs rated high
    assert metrics["analogy_coverage"] == pytest.approx(2 / 3)
    assert 0.0 <= metrics["analogy_accuracy"] <= 1.0
    assert metrics["vocab_size"] == spark.table(
        f"{cfg.catalog.database}.gold_word2vec_vocab_tickets").count()
    artifact = Path(model.artifact)
    assert (artifact / "neighbours.png").read_bytes()[:4] == b"\x89PNG"

    emb = Embeddings.load(artifact)
    groups = [[emb.index[w] for w in ws] for ws in TOPICS.values()]
    within = np.mean([emb.unit[a] @ emb.unit[b] for g in groups for a in g for b in g if a != b])
    across = np.mean([emb.unit[a] @ emb.unit[b] for i, g in enumerate(groups)
                      for h in groups[i + 1:] for a in g for b in h])
    assert within > across + 0.3
    near = [w for w, _ in emb.neighbours("cat", 4)]
    assert len(near) == 4 and sum(w in TOPICS["animals"] for w in near) >= 3

    scored = score(spark, cfg, "word2vec", model.name)
    assert scored.rows == int(metrics["vocab_size"]) and 1 <= scored.model_loads <= 2
    rows = {r["word"]: r for r in spark.table(scored.table).collect()}
    assert len(rows["cat"]["neighbours"]) == 4 and len(rows["cat"]["vector"]) == 16
    assert rows["cat"]["neighbours"] == near
    assert rows["cat"]["similarities"] == sorted(rows["cat"]["similarities"], reverse=True)
    # A table with a 'word' column scores its words (lower-cased, known ones only).
    queries = f"{cfg.catalog.database}.queries"
    spark.createDataFrame([("Cat",), ("dog",), ("unicorn",), ("cat",)], "word string") \
        .write.format("delta").saveAsTable(queries)
    asked = score(spark, cfg, "word2vec", model.name, input_table=queries)
    words = {r["word"]: r["neighbours"] for r in spark.table(asked.table)
             .where(F.col("run_id") == asked.run_id).collect()}
    assert asked.rows == 2 and words["cat"] == near and "dog" in words
    # The model's MLflow pyfunc, in this process without Spark: one row per word asked.
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(cfg))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.name}/{model.version}")
    got = pyfunc.predict(pd.DataFrame({"word": ["Cat", "unicorn", "dog"]}))
    assert list(got["word"]) == ["cat", "unicorn", "dog"]
    assert got["neighbours"][0] == near and got["neighbours"][1] is None
    assert list(got["vector"][2]) == pytest.approx(list(rows["dog"]["vector"]))
    assert list(got["similarities"][0]) == pytest.approx(list(rows["cat"]["similarities"]))

    meta = json.loads((artifact / "meta.json").read_text())
    assert meta["params"]["min_count"] == 2 and meta["training_version"] == model.training_version


@pytest.mark.slow
def test_cbow_step_learns_topics_in_process():
    import tensorflow as tf

    from models.word2vec.rank import _train_chunk, initial_weights, make_steps, noise_table

    rng = np.random.default_rng(5)
    topics = np.arange(24).reshape(3, 8)                 # 3 topics of 8 word ids
    sentences = [rng.choice(topics[i % 3], 20) for i in range(150)]
    ids = np.concatenate(sentences).astype(np.int32)
    sent = np.repeat(np.arange(150, dtype=np.int32), 20)
    counts = np.bincount(ids, minlength=24)
    w_in, w_out = (tf.Variable(w) for w in initial_weights(24, 12, 1))
    steps = make_steps(tf, w_in, w_out, noise_table(counts), 4, 1)
    params = {**SMALL, "sg": 0, "sample": 0.0, "min_alpha": 0.0001}
    loss, examples = 0.0, 0
    for epoch in range(6):
        loss, examples = _train_chunk(ids, sent, counts, params, rng, steps, epoch / 6, 1 / 6)
    assert examples == len(ids)                          # every centre has a context
    unit = w_in.numpy() / np.linalg.norm(w_in.numpy(), axis=1, keepdims=True)
    sims = unit @ unit.T
    within = np.mean([sims[np.ix_(t, t)][~np.eye(8, dtype=bool)].mean() for t in topics])
    across = sims[np.ix_(topics[0], topics[1])].mean()
    assert within > across + 0.3
