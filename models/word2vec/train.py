"""Driver side of word2vec training: find the vocabulary, plan, evaluate.

The trainer takes the pinned version of a corpus table, finds the vocabulary
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
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.errors import ConfigError, SourceError
from lakehouse.featuresets.contract import entry_of
from lakehouse.featuresets.text import ALL_CORPORA, build_metadata, corpus_specs
from lakehouse.tables import layer_table
from models.evaluate import plot_history
from models.family import FamilyTrainer, RunPaths, TrainPlan
from models.runner import snapshot_files
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


class Word2VecTrainer(FamilyTrainer):
    """Trains word2vec on a corpus table (``corpus`` or a text data set's)."""

    rank_fn = staticmethod(train_word2vec_rank)

    def table(self, cfg: Config, dataset: str) -> str:
        """``gold_word2vec_corpus`` or ``gold_word2vec_corpus_<dataset>``."""
        if dataset != ALL_CORPORA:
            entry_of(cfg, dataset, "text")
        return corpus_specs(dataset)[1].full_name(cfg.catalog.database)

    def plan(self, spark: SparkSession, cfg: Config, dataset: str, df: DataFrame, table: str,
             version: int, params: dict[str, Any]) -> TrainPlan:
        """The vocabulary the pinned corpus version was built with; a file per rank."""
        meta = build_metadata(spark, table, version)
        vocab_table = corpus_specs(dataset)[0].full_name(cfg.catalog.database)
        words, counts = _vocabulary(spark, vocab_table, meta)
        files = snapshot_files(df)["train"]
        if len(files) < cfg.train.num_proc:
            raise ConfigError(f"{table} v{version} has {len(files)} file(s) for "
                              f"{cfg.train.num_proc} ranks; rebuild it with partitions >= "
                              f"num_proc")
        return TrainPlan(dict(params), f"{len(words)} words in vocabulary, {len(files)} files",
                         {"words": words, "counts": counts, "files": files},
                         recorded={**params, **meta.get("params", {})})

    def rank_spec(self, cfg: Config, plan: TrainPlan, run: RunPaths) -> Word2VecSpec:
        """The corpus files and the word counts (the noise distribution)."""
        return Word2VecSpec(params=dict(plan.params), files=plan.state["files"],
                            counts=plan.state["counts"],
                            checkpoint_dir=run.checkpoints, artifact_dir=run.outputs,
                            seed=cfg.train.seed, lake=run.lake)

    def evaluate(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                 ranks: list[dict[str, Any]], staged: Path, name: str) -> dict[str, float]:
        """Speed, loss and the word benchmarks found in silver; neighbours and curves."""
        rank0 = next(r for r in ranks if r["rank"] == 0)
        (staged / VOCAB_FILE).write_text(json.dumps(plan.state["words"]))
        metrics = {**_speed(ranks, plan.params),
                   **evaluate_model(spark, cfg, Embeddings.load(staged))}
        plot_neighbours(Embeddings.load(staged), staged / "neighbours.png",
                        f"{name}: nearest neighbours (PCA)")
        if rank0["history"]["loss"]:
            plot_history(rank0["history"], staged / "training_curves.png", f"{name}: training")
        return metrics


    def example(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                staged: Path) -> pd.DataFrame | None:
        """The five most frequent words (and one outside the vocabulary gives NULLs)."""
        return pd.DataFrame({"word": list(plan.state["words"][:5])})

    def pyfunc_options(self, plan: TrainPlan) -> dict[str, Any]:
        """``k``: the neighbours the scorer gives (the ``neighbours`` parameter)."""
        return {"k": int(plan.params.get("neighbours", 10))}


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


