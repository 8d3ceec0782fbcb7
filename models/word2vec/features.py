"""Spark side of word2vec features: tokens, a vocabulary and token-id sentences.

From the documents of a text data set (its catalog roles ``id`` and ``text``, and the
settings of :mod:`lakehouse.kinds`), or for the feature set ``corpus`` from every
bundled corpus in ``silver_documents`` (or those the ``corpora`` parameter names),
Spark builds two gold tables (``_<dataset>`` appended to their names for a data set):

* ``gold_word2vec_vocab`` (word_id, word, count): every word seen at least
  ``min_count`` times; ids by descending count (ties by word), so id 0 is the most
  frequent word.
* ``gold_word2vec_corpus`` (row_id, split, tokens array<int>): each document's
  in-vocabulary words as ids, in text order, chunked into sentences of at most
  ``max_sentence_length`` ids (gensim caps sentences at 10,000). Only a ``train``
  split; written in at least ``2 * num_proc`` Parquet files so that every Horovod
  rank reads its own shard with Petastorm.

Tokenisation follows gensim's simple tokenisation: lower case, runs of letters, with
inner apostrophes kept (``don't``). Words outside the vocabulary are dropped before
chunking, as gensim drops them before it forms context windows.

A build is keyed by the silver version and the feature parameters. The key is stored
as the corpus commit's ``userMetadata`` (with the vocabulary version it belongs to),
so a rebuild from the same silver version with the same parameters writes nothing,
and training can find the vocabulary of the corpus version it pins.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, IntegerType, LongType, StringType

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.datasets import Dataset
from lakehouse.errors import ConfigError, SourceError, TableNotFoundError
from lakehouse.features import FeatureSet, entry_of, silver_rows
from lakehouse.kinds import TextFeatures, text_features
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, layer_table, register

log = logging.getLogger(__name__)

TOKEN_PATTERN = r"\p{L}+(?:'\p{L}+)*"
FEATURE_DEFAULTS: dict[str, Any] = {"corpora": None, "min_count": 5,
                                    "max_sentence_length": 1000, "partitions": None}

ALL_CORPORA = "corpus"   # the feature set of every document in silver_documents


def corpus_specs(dataset: str) -> tuple[TableSpec, TableSpec]:
    """The registry entries of a feature set's vocabulary and sentence tables.

    ``corpus`` (every bundled corpus) keeps ``gold_word2vec_vocab`` and
    ``gold_word2vec_corpus``; a text data set ``X`` gets ``gold_word2vec_vocab_X`` and
    ``gold_word2vec_corpus_X``.
    """
    suffix = "" if dataset == ALL_CORPORA else f"_{dataset}"
    vocab = register(TableSpec(
        "gold", f"word2vec_vocab{suffix}",
        (_f("word_id", IntegerType(), False), _f("word", StringType(), False),
         _f("count", LongType(), False)),
        ("word_id",), comment=f"word2vec vocabulary of {dataset}: words seen at least "
                              f"min_count times"))
    corpus = register(TableSpec(
        "gold", f"word2vec_corpus{suffix}",
        (_f("row_id", LongType(), False), _f("split", StringType(), False),
         _f("tokens", ArrayType(IntegerType()))),
        ("row_id",), partition_by=("split",), properties=TRAINING_TABLE_PROPERTIES,
        comment=f"word2vec training sentences of {dataset} as vocabulary ids"))
    return vocab, corpus


def feature_params(params: dict[str, Any],
                   declared: TextFeatures | None = None) -> dict[str, Any]:
    """The feature parameters with defaults filled in and checked.

    Args:
        params: given parameters.
        declared: a text data set's declared settings (defaults under ``params``);
            ``corpora`` applies only to the ``corpus`` feature set (``declared`` None).

    Raises:
        ConfigError: naming an unknown or out-of-range parameter.
    """
    known = FEATURE_DEFAULTS if declared is None else \
        {k: v for k, v in FEATURE_DEFAULTS.items() if k != "corpora"}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"word2vec features: unknown parameter(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    merged = {**FEATURE_DEFAULTS, **(asdict(declared) if declared else {}), **params}
    corpora = merged["corpora"]
    if isinstance(corpora, str):
        corpora = [c.strip() for c in corpora.split(",") if c.strip()]
    merged["corpora"] = sorted(corpora) if corpora else None
    for key in ("min_count", "max_sentence_length"):
        if int(merged[key]) < 1:
            raise ConfigError(f"word2vec features: {key} must be >= 1, got {merged[key]}")
        merged[key] = int(merged[key])
    return merged


def tokenise(text: Any) -> Any:
    """A Column of lower-case word tokens (letters, inner apostrophes) of a text column."""
    return F.regexp_extract_all(F.lower(text), F.lit(TOKEN_PATTERN), 0)


def vocabulary(docs: DataFrame, min_count: int) -> DataFrame:
    """Words seen at least ``min_count`` times, ids by descending count then word.

    Args:
        docs: rows with a ``tokens`` array<string> column.
        min_count: the least count a word needs.

    Returns:
        ``word_id``, ``word``, ``count``.
    """
    counts = (docs.select(F.explode("tokens").alias("word")).groupBy("word")
              .agg(F.count("*").alias("count")).filter(F.col("count") >= min_count))
    order = Window.orderBy(F.desc("count"), F.asc("word"))
    return counts.select((F.row_number().over(order) - 1).cast("int").alias("word_id"),
                         "word", F.col("count").cast("long").alias("count"))


def sentences(docs: DataFrame, vocab: DataFrame, max_len: int) -> DataFrame:
    """Documents as id sentences of at most ``max_len`` in-vocabulary words.

    Args:
        docs: ``corpus``, ``doc_id``, ``tokens`` array<string>.
        vocab: ``word``, ``word_id`` (small: broadcast to the join).
        max_len: the longest sentence.

    Returns:
        ``row_id`` (a hash of corpus, document and chunk), ``split``, ``tokens``.
    """
    words = docs.select("corpus", "doc_id", F.posexplode("tokens").alias("pos", "word"))
    ids = words.join(F.broadcast(vocab.select("word", "word_id")), "word")
    ordered = ids.groupBy("corpus", "doc_id").agg(
        F.sort_array(F.collect_list(F.struct("pos", "word_id"))).alias("s"))
    doc_ids = ordered.select("corpus", "doc_id",
                             F.transform("s", lambda x: x["word_id"]).alias("ids"))
    chunks = F.expr(f"transform(sequence(0, cast(ceil(size(ids) / {max_len}) as int) - 1), "
                    f"i -> slice(ids, i * {max_len} + 1, {max_len}))")
    out = doc_ids.select("corpus", "doc_id", F.posexplode(chunks).alias("chunk", "tokens"))
    return out.select(F.xxhash64("corpus", "doc_id", "chunk").alias("row_id"),
                      F.lit("train").alias("split"), "tokens")


def build_key(silver_version: int, params: dict[str, Any]) -> str:
    """The idempotency key of a build: silver version plus feature parameters."""
    shown = {k: v for k, v in params.items() if k != "partitions"}
    digest = hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()[:12]
    return f"silver-v{silver_version}-{digest}"


def build_metadata(spark: SparkSession, full_name: str,
                   version: int | None = None) -> dict[str, Any]:
    """The build metadata stored with a corpus commit (:func:`lakehouse.delta.commit_json`).

    At ``version``, or else at the data version: the last build, whatever maintenance
    committed after it.

    Raises:
        TableNotFoundError: the commit carries no word2vec build metadata.
    """
    latest = version is None
    if latest:
        version = delta.snapshot(spark, full_name).data_version
    meta = delta.commit_json(spark, full_name, int(version))
    if not meta and not latest:
        raise TableNotFoundError(f"{full_name} v{version}: no word2vec build metadata; "
                                 f"rebuild it with `lakeforge features corpus`")
    return meta


def documents(spark: SparkSession, cfg: Config, entry: Dataset | None,
              params: dict[str, Any]) -> tuple[DataFrame, delta.Snapshot]:
    """The documents of a feature set: ``corpus``, ``doc_id``, ``text``, and their snapshot.

    ``corpus`` (no ``entry``) reads ``silver_documents`` (the ``corpora`` parameter picks
    some); a text data set reads its own silver rows through its ``id`` and ``text`` roles.
    """
    if entry is None:
        silver = layer_table(cfg.catalog.database, "silver", "documents")
        pinned = delta.snapshot(spark, silver)
        docs = delta.read_version(spark, silver, pinned.version)   # maintenance keeps them
        if params["corpora"]:
            docs = docs.filter(F.col("corpus").isin(params["corpora"]))
        return docs.select("corpus", "doc_id", "text"), pinned
    rows, pinned = silver_rows(spark, cfg, entry)
    return rows.select(F.lit(entry.name).alias("corpus"),
                       F.col(str(entry.roles["id"])).cast("string").alias("doc_id"),
                       F.col(str(entry.roles["text"])).cast("string").alias("text")), pinned


def build_corpus(spark: SparkSession, cfg: Config, dataset: str,
                 params: dict[str, Any]) -> FeatureSet:
    """Build (or keep, when built from the same silver version and parameters) the tables.

    Args:
        spark: the session.
        cfg: configuration (database, ``train.num_proc`` for the file count).
        dataset: ``corpus`` (every bundled corpus) or a text data set of the catalog.
        params: ``corpora`` (``corpus`` only; list or comma-separated; default all),
            ``min_count``, ``max_sentence_length`` (defaults: the data set's declared
            ``features:``, else 5 and 1000), ``partitions`` (files; default
            ``max(4, 2 * num_proc)``).

    Returns:
        The corpus table: version, sentences (``rows``), vocabulary size
        (``n_features``).

    Raises:
        SourceError: no document of the corpora, or no word reaches ``min_count``.
    """
    entry = None if dataset == ALL_CORPORA else entry_of(cfg, dataset, "text")
    params = feature_params(params, text_features(entry) if entry is not None else None)
    db = cfg.catalog.database
    vocab_spec, corpus_spec = corpus_specs(dataset)
    docs, pinned = documents(spark, cfg, entry, params)
    silver, silver_version = pinned.table, pinned.data_version
    vocab_table = delta.ensure_table(spark, vocab_spec, db)
    corpus_table = delta.ensure_table(spark, corpus_spec, db)
    key = build_key(silver_version, params)
    if build_metadata(spark, corpus_table).get("key") == key:
        log.info("%s is already built from %s v%d with %s; nothing to do",
                 corpus_table, silver, silver_version, key)
        return _feature_set(spark, dataset, corpus_table, vocab_table)
    docs = docs.select("corpus", "doc_id", tokenise(F.col("text")).alias("tokens"))
    vocab_version = _write_vocab(spark, docs, vocab_spec, vocab_table, params, key, silver)
    vocab = delta.read_version(spark, vocab_table, vocab_version)
    files = params["partitions"] or max(4, 2 * cfg.train.num_proc)
    meta = {"key": key, "silver_version": silver_version, "vocab_version": vocab_version,
            "params": {k: v for k, v in params.items() if k != "partitions"}}
    before = delta.current_version(spark, corpus_table)
    (sentences(docs, vocab, params["max_sentence_length"]).repartition(files)
     .write.format("delta").mode("overwrite")
     .option("txnAppId", f"lakeforge/features/{corpus_spec.name}/{key}")
     .option("txnVersion", before).option("userMetadata", json.dumps(meta, sort_keys=True))
     .save(delta.table_location(spark, corpus_table)))
    result = _feature_set(spark, dataset, corpus_table, vocab_table)
    log.info("word2vec corpus: %s v%d holds %d sentences over %d words (%s v%d, min_count %d)",
             corpus_table, result.version, result.rows, result.n_features, vocab_table,
             vocab_version, params["min_count"])
    return result


def _write_vocab(spark: SparkSession, docs: DataFrame, vocab_spec: TableSpec,
                 vocab_table: str, params: dict[str, Any], key: str, silver: str) -> int:
    """Write the vocabulary and return its version; stop if it is empty."""
    vocab = vocabulary(docs, params["min_count"])
    before = delta.current_version(spark, vocab_table)
    (vocab.write.format("delta").mode("overwrite")
     .option("txnAppId", f"lakeforge/features/{vocab_spec.name}/{key}")
     .option("txnVersion", before).option("userMetadata", key)
     .save(delta.table_location(spark, vocab_table)))
    version = delta.current_version(spark, vocab_table)
    if not spark.table(vocab_table).limit(1).count():
        corpora = ", ".join(params["corpora"] or ["all corpora"])
        raise SourceError(
            f"empty word2vec corpus: no word in {silver} ({corpora}) occurs at least "
            f"min_count={params['min_count']} times; {vocab_table} v{version} is empty")
    return version


def _feature_set(spark: SparkSession, dataset: str, corpus_table: str,
                 vocab_table: str) -> FeatureSet:
    version = delta.snapshot(spark, corpus_table).data_version
    meta = build_metadata(spark, corpus_table, version)
    rows = spark.table(corpus_table).count()
    words = delta.read_data_version(spark, vocab_table, meta["vocab_version"]).count()
    return FeatureSet(dataset, corpus_table, version, rows, words, 0, ())
