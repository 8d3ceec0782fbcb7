"""Driver side of word2vec training: pin the corpus, run the ranks, evaluate, register.

The trainer pins a version of ``gold_word2vec_corpus``, finds the vocabulary
version it was built with (stored with the corpus commit), hands the Parquet files
and the word counts to :func:`models.word2vec.rank.train_word2vec_rank` on
``num_proc`` Horovod ranks, then evaluates rank 0's vectors on the driver
(WordSim-353, SimLex-999, Google analogies from the silver tables, when present),
draws ``neighbours.png`` and registers the model. The vocabulary is the one table
collected to the driver: it holds one row per distinct word (tens of thousands),
and the noise distribution needs every count.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import ConfigError, SourceError
from lakehouse.features import entry_of
from lakehouse.tables import layer_table
from models.evaluate import plot_history
from models.runner import (
    TrainResult,
    default_run_id,
    pin_table,
    registered_run,
    run_ranks,
    snapshot_files,
    staging_dir,
)
from models.store import ModelStore
from models.word2vec.corpus import ALL_CORPORA, commit_metadata, corpus_specs
from models.word2vec.evaluate import (
    VOCAB_FILE,
    Embeddings,
    analogy_accuracy,
    plot_neighbours,
    similarity_spearman,
)
from models.word2vec.rank import Word2VecSpec, train_word2vec_rank

log = logging.getLogger(__name__)
SIMILARITY_SETS = ("wordsim353", "simlex999")


def train_word2vec(spark: SparkSession, cfg: Config, dataset: str, version: int | None,
                   run_id: str | None, params: dict[str, Any],
                   name: str | None) -> TrainResult:
    """Train word2vec on a pinned corpus version with Horovod ranks and register it.

    Args:
        spark: the session.
        cfg: configuration (``train.num_proc`` ranks, ``train.seed``).
        dataset: ``corpus`` or a text data set (its corpus built with
            ``lakeforge features``).
        version: corpus table version (default: current).
        run_id: a run started again with the same id resumes from its last epoch.
        params: training parameters, defaults merged (see the family's defaults).
        name: model name (default ``corpus_word2vec``).

    Returns:
        The registered model, the loss per epoch and each rank's report.

    Raises:
        ConfigError: fewer files than ranks.
        SourceError: the pinned vocabulary is empty.
    """
    start = time.monotonic()
    db = cfg.catalog.database
    if dataset != ALL_CORPORA:
        entry_of(cfg, dataset, "text")
    vocab_spec, corpus_spec = corpus_specs(dataset)
    corpus_table = corpus_spec.full_name(db)
    df, version = pin_table(spark, corpus_table, version)
    meta = commit_metadata(spark, corpus_table, version)
    words, counts = _vocabulary(spark, vocab_spec.full_name(db), meta)
    files = snapshot_files(df)["train"]
    if len(files) < cfg.train.num_proc:
        raise ConfigError(f"{corpus_table} v{version} has {len(files)} file(s) for "
                          f"{cfg.train.num_proc} ranks; rebuild it with partitions >= num_proc")
    name = name or f"{dataset}_word2vec"
    run_id = run_id or default_run_id(name, "word2vec", corpus_table, version, params)
    done = registered_run(spark, cfg, name, run_id, start)
    if done is not None:
        return done
    staged = staging_dir(cfg, run_id)
    spec = Word2VecSpec(params=dict(params), files=files, counts=counts,
                        checkpoint_dir=str(cfg.checkpoint_dir / "train" / run_id),
                        artifact_dir=str(staged), seed=cfg.train.seed)
    log.info("training %s (word2vec) on %s v%d: %d words in vocabulary, %d files, %d ranks, "
             "run %s", name, corpus_table, version, len(words), len(files),
             cfg.train.num_proc, run_id)
    ranks = run_ranks(spec, cfg, train_word2vec_rank)
    rank0 = next(r for r in ranks if r["rank"] == 0)
    (staged / VOCAB_FILE).write_text(json.dumps(words))
    metrics = {**_speed(ranks, params), **evaluate_model(spark, cfg, Embeddings.load(staged))}
    plot_neighbours(Embeddings.load(staged), staged / "neighbours.png",
                    f"{name}: nearest neighbours (PCA)")
    if rank0["history"]["loss"]:
        plot_history(rank0["history"], staged / "training_curves.png", f"{name}: training")
    recorded = {**params, **meta.get("params", {})}
    record = ModelStore(spark, cfg).register(name, "word2vec", staged, recorded, metrics,
                                             corpus_table, version, run_id)
    seconds = time.monotonic() - start
    log.info("registered %s v%d in %.0fs: %s", name, record.version, seconds,
             ", ".join(f"{k}={v:.4g}" for k, v in sorted(record.metrics.items())))
    return TrainResult(record, rank0["history"], ranks, seconds)


def evaluate_model(spark: SparkSession, cfg: Config, emb: Embeddings) -> dict[str, float]:
    """Similarity Spearman, analogy accuracy and their coverage, from the silver tables.

    A benchmark whose silver table is missing or has no rows is left out (logged).
    """
    db = cfg.catalog.database
    metrics: dict[str, float] = {"vocab_size": float(len(emb.words))}
    sim_table = layer_table(db, "silver", "word_similarity")
    if delta.table_exists(spark, sim_table):
        rows = spark.table(sim_table).select("dataset", "word1", "word2", "score").collect()
        for name in SIMILARITY_SETS:
            rated = [(r["word1"], r["word2"], r["score"]) for r in rows if r["dataset"] == name]
            if rated:
                rho, coverage = similarity_spearman(emb, rated)
                metrics[f"{name}_coverage"] = coverage
                if not math.isnan(rho):
                    metrics[f"{name}_spearman"] = rho
    else:
        log.info("%s does not exist: no similarity metrics", sim_table)
    analogy_table = layer_table(db, "silver", "word_analogies")
    if delta.table_exists(spark, analogy_table):
        questions = [tuple(r) for r in spark.table(analogy_table).select("a", "b", "c", "d")
                     .where(F.col("d").isNotNull()).collect()]
        if questions:
            accuracy, coverage = analogy_accuracy(emb, questions)
            metrics["analogy_coverage"] = coverage
            if not math.isnan(accuracy):
                metrics["analogy_accuracy"] = accuracy
    else:
        log.info("%s does not exist: no analogy metrics", analogy_table)
    return metrics


def _speed(ranks: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, float]:
    """Words per second of training over all ranks, epochs, final loss."""
    seconds = max(r["train_seconds"] for r in ranks)
    words = sum(r["words"] for r in ranks)
    rank0 = next(r for r in ranks if r["rank"] == 0)
    out = {"epochs": float(rank0["initial_epoch"] + rank0["epochs_run"]),
           "train_seconds": float(seconds),
           "words_per_second": float(words / seconds) if seconds > 0 else 0.0}
    if rank0["history"]["loss"]:
        out["loss"] = float(rank0["history"]["loss"][-1])
    return out


def _vocabulary(spark: SparkSession, vocab_table: str,
                meta: dict[str, Any]) -> tuple[list[str], list[int]]:
    """Words and counts by id of the vocabulary version a corpus was built with."""
    vocab = delta.read_data_version(spark, vocab_table, meta["vocab_version"])
    rows = vocab.orderBy("word_id").select("word_id", "word", "count").collect()
    if not rows:
        min_count = meta.get("params", {}).get("min_count")
        raise SourceError(f"empty word2vec corpus: {vocab_table} v{meta['vocab_version']} has "
                          f"no word with min_count={min_count}")
    if rows[-1]["word_id"] != len(rows) - 1:
        raise SourceError(f"{vocab_table} v{meta['vocab_version']}: word ids are not 0..n-1")
    return [r["word"] for r in rows], [int(r["count"]) for r in rows]


