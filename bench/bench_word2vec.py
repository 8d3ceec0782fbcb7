"""word2vec benchmark: lakeforge (2 Horovod ranks) against gensim and Spark MLlib.

All three learn from the same sentences: the token lists of the demo warehouse's
``gold_word2vec_corpus`` (enwiki, lee and bible, ~1.6 M words), built first with
``build_features(spark, cfg, "corpus")`` when missing. gensim ``Word2Vec`` runs
with the same dim, window, negatives, min_count, sample, epochs, ``sg=1`` and
``workers=2``; Spark MLlib ``Word2Vec`` with the same vectorSize, windowSize and
minCount (it has no negative sampling: it trains hierarchical softmax, and its
``maxIter`` defaults to 1 here because each iteration is slow). Words/s is corpus
words times epochs over training seconds (vocabulary building left out); quality
is WordSim-353 and SimLex-999 Spearman and Google analogy accuracy (3CosAdd), all
scored by the same code, with ratios against gensim.

    make bench-word2vec
    .venv/bin/python bench/bench_word2vec.py --epochs 3 --mllib-iter 1
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
from common import session

from lakehouse.featuresets import build_features
from lakehouse.render import format_table
from models.runner import train
from models.word2vec import FAMILY
from models.word2vec.evaluate import Embeddings
from models.word2vec.train import evaluate_model

METRICS = ("wordsim353_spearman", "simlex999_spearman", "analogy_accuracy")


def corpus_sentences(spark, cfg) -> tuple[list[list[str]], int]:
    """The gold corpus as lists of words (the peers' input), and its word count."""
    build_features(spark, cfg, "corpus")
    db = cfg.catalog.database
    words = [r["word"] for r in spark.table(f"{db}.gold_word2vec_vocab").orderBy("word_id")
             .select("word").collect()]
    lookup = np.asarray(words, dtype=object)
    sentences = [list(lookup[np.asarray(r["tokens"], dtype=np.int64)])
                 for r in spark.table(f"{db}.gold_word2vec_corpus").select("tokens").collect()]
    return sentences, sum(len(s) for s in sentences)


def bench_lakeforge(spark, cfg, params: dict) -> dict:
    result = train(spark, cfg, "word2vec", "corpus", params=params,
                   run_id=f"bench-{uuid.uuid4().hex[:8]}", name="bench_corpus_word2vec")
    m = result.model.metrics
    return {**{k: m.get(k) for k in METRICS}, "seconds": m["train_seconds"],
            "words_per_second": m["words_per_second"], "coverage": m.get("analogy_coverage")}


def bench_gensim(spark, cfg, sentences: list[list[str]], words: int, params: dict) -> dict:
    from gensim.models import Word2Vec

    model = Word2Vec(vector_size=params["dim"], window=params["window"],
                     negative=params["negative"], min_count=5, sample=params["sample"],
                     alpha=params["alpha"], min_alpha=params["min_alpha"], sg=1, workers=2,
                     seed=cfg.train.seed)
    model.build_vocab(sentences)
    start = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=params["epochs"])
    seconds = time.perf_counter() - start
    emb = Embeddings(list(model.wv.index_to_key), model.wv.vectors)
    return _result(evaluate_model(spark, cfg, emb), seconds, words * params["epochs"])


def bench_mllib(spark, cfg, sentences: list[list[str]], words: int, params: dict,
                iterations: int) -> dict:
    from pyspark.ml.feature import Word2Vec

    df = spark.createDataFrame([(s,) for s in sentences], "tokens array<string>").cache()
    df.count()
    w2v = Word2Vec(vectorSize=params["dim"], windowSize=params["window"], minCount=5,
                   maxIter=iterations, stepSize=params["alpha"], numPartitions=2,
                   inputCol="tokens", seed=cfg.train.seed)
    start = time.perf_counter()
    model = w2v.fit(df)
    seconds = time.perf_counter() - start
    vectors = model.getVectors().toPandas()
    df.unpersist()
    emb = Embeddings(list(vectors.word), np.stack(vectors.vector.map(lambda v: v.toArray())))
    return _result(evaluate_model(spark, cfg, emb), seconds, words * iterations)


def _result(metrics: dict, seconds: float, words: int) -> dict:
    return {**{k: metrics.get(k) for k in METRICS}, "seconds": seconds,
            "words_per_second": words / seconds, "coverage": metrics.get("analogy_coverage")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=FAMILY.defaults["epochs"])
    parser.add_argument("--mllib-iter", type=int, default=1)
    parser.add_argument("--param", dest="params", action="append", default=[],
                        metavar="KEY=VALUE", help="lakeforge training parameter (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg, spark = session(args.overrides)
    extra = {k: type(FAMILY.defaults[k])(v) for k, v in (p.split("=", 1) for p in args.params)}
    params = {**FAMILY.defaults, "epochs": args.epochs, **extra}
    sentences, words = corpus_sentences(spark, cfg)
    rows = {
        "lakeforge word2vec, Horovod 2 ranks": bench_lakeforge(spark, cfg, params),
        "gensim Word2Vec, sg=1, workers=2": bench_gensim(spark, cfg, sentences, words, params),
        f"Spark MLlib Word2Vec (hier. softmax, maxIter {args.mllib_iter})":
            bench_mllib(spark, cfg, sentences, words, params, args.mllib_iter),
    }
    ref = rows["gensim Word2Vec, sg=1, workers=2"]
    print(f"\nword2vec on the demo corpus: {words:,} words in {len(sentences):,} sentences, "
          f"dim {params['dim']}, window {params['window']}, negative {params['negative']}, "
          f"sample {params['sample']}, {params['epochs']} epochs\n")
    print(format_table(
        ["model", "train s", "words/s", "words/s vs gensim", "WordSim-353", "vs gensim",
         "SimLex-999", "analogies", "analogy coverage"],
        [(name, round(r["seconds"], 1), int(r["words_per_second"]),
          round(r["words_per_second"] / ref["words_per_second"], 3),
          _round(r["wordsim353_spearman"]), _diff(r, ref, "wordsim353_spearman"),
          _round(r["simlex999_spearman"]), _round(r["analogy_accuracy"]),
          _round(r["coverage"])) for name, r in rows.items()]))
    spark.stop()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _diff(row: dict, ref: dict, key: str) -> float | None:
    if row.get(key) is None or ref.get(key) is None:
        return None
    return round(row[key] - ref[key], 4)


if __name__ == "__main__":
    main()
