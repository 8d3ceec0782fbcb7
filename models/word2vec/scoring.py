"""Scoring word2vec: one prediction row per word, its vector and nearest neighbours.

Which words are scored: when the input table has a ``word`` column (for example
``gold_word2vec_vocab``, or any table of query words), its distinct lower-cased
words, leaving out words outside the model's vocabulary; otherwise (the default
input, the model's training table ``gold_word2vec_corpus``, holds only ids) every
word of the model's own vocabulary, taken from the artifact. Either way the work
runs on executors with ``mapInPandas``: each Python worker loads the artifact once
(adding 1 to the ``loads`` accumulator) and scores its batches with one matrix
product per batch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructType

from lakehouse.config import Config
from lakehouse.errors import SchemaMismatchError
from lakehouse.lakefs import LakeFS
from lakehouse.tables import _f
from models.scoring import load_once
from models.store import ModelRecord
from models.word2vec.evaluate import VOCAB_FILE, Embeddings, top_k
from models.word2vec.rank import EMBEDDINGS_FILE

PREDICTION_FIELDS = (
    _f("word", StringType(), False),
    _f("vector", ArrayType(FloatType())),
    _f("neighbours", ArrayType(StringType())),
    _f("similarities", ArrayType(FloatType())),
)
_OUT = StructType(list(PREDICTION_FIELDS))


def cached_embeddings(artifact: str, loads=None, lake: LakeFS | None = None):
    """The artifact's :class:`Embeddings`, loaded at most once in this process."""
    return load_once(artifact, EMBEDDINGS_FILE, Embeddings.load, loads, lake)


def neighbour_batches(batches: Iterator[pd.DataFrame], artifact: str, k: int,
                      loads, lake: LakeFS | None = None) -> Iterator[pd.DataFrame]:
    """Executor side: vector and top-``k`` neighbours for batches of words or word ids."""
    emb = cached_embeddings(artifact, loads, lake)
    for batch in batches:
        if "word_id" in batch.columns:
            rows = batch["word_id"].to_numpy(dtype=np.int64)
        else:
            rows = np.array([emb.index[w] for w in batch["word"] if w in emb.index], np.int64)
        if not len(rows):
            continue
        ids, sims = top_k(emb.unit, emb.unit[rows], k, rows[:, None])
        words = np.asarray(emb.words, dtype=object)
        yield pd.DataFrame({
            "word": words[rows],
            "vector": list(emb.vectors[rows].astype(np.float32)),
            "neighbours": [list(words[r]) for r in ids],
            "similarities": list(sims.astype(np.float32)),
        })


def score_words(spark: SparkSession, cfg: Config, record: ModelRecord, df: DataFrame,
                loads) -> DataFrame:
    """The family's scorer: ``word``, ``vector``, ``neighbours``, ``similarities``.

    Args:
        spark: the session.
        cfg: configuration (``train.num_proc`` sets the partitions of the vocabulary).
        record: the model (``params['neighbours']`` is k, default 10).
        df: the pinned input; only its ``word`` column is used, if it has one.
        loads: accumulator counting artifact loads on executors.

    Returns:
        One row per scored word, computed on executors.
    """
    k = int(record.params.get("neighbours", 10))
    lake = LakeFS.of(cfg)
    fn = functools.partial(neighbour_batches, artifact=record.artifact, k=k, loads=loads,
                           lake=lake)
    if "word" in df.columns:
        words = df.select(F.lower("word").alias("word")).where(F.col("word").isNotNull())
        return words.distinct().mapInPandas(fn, schema=_OUT)
    size = int(record.metrics.get("vocab_size", 0)) or _vocab_size(lake.fetch(record.artifact))
    ids = spark.range(0, size, numPartitions=max(2, cfg.train.num_proc))
    return ids.select(F.col("id").alias("word_id")).mapInPandas(fn, schema=_OUT)


def _vocab_size(artifact: str) -> int:
    import json


    with open(os.path.join(artifact, VOCAB_FILE)) as fh:
        return len(json.load(fh))


def predict_word2vec(folder: str, rows: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """Each word's vector and its ``k`` nearest neighbours (NULLs for an unknown word).

    Raises:
        SchemaMismatchError: no ``word`` column.
    """
    if "word" not in rows.columns:
        raise SchemaMismatchError(f"input rows have no column 'word' (columns: "
                                  f"{', '.join(map(str, rows.columns))})")
    words = rows["word"].map(lambda w: w.lower() if isinstance(w, str) else None)
    known = pd.concat(list(neighbour_batches(iter([pd.DataFrame({"word": words.dropna()})]),
                                             folder, k, None)) or [pd.DataFrame(
        {"word": [], "vector": [], "neighbours": [], "similarities": []})])
    found = known.drop_duplicates("word").set_index("word")
    out = pd.DataFrame({"word": words.to_numpy()}, index=rows.index)
    for column in ("vector", "neighbours", "similarities"):
        out[column] = [found[column].get(w) if w is not None else None for w in words]
    return out
