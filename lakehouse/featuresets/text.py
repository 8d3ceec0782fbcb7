"""The text kind: tokens, a vocabulary and token-id sentences, built with Spark.

A text data set's catalog entry::

    reviews:
      kind: text
      roles: {id: review_id, text: body}
      features: {min_count: 5, max_sentence_length: 1000}

From the documents of a text data set (its catalog roles ``id`` and ``text``, and the
settings of its ``features:``), or for the feature set ``corpus`` from every
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

A build is keyed by the silver version and the settings. The key is stored in the
corpus commit's ``userMetadata`` (with the vocabulary version it belongs to), so a
rebuild from the same silver version with the same settings writes nothing, and
training can find the vocabulary of the corpus version it pins. Nothing is fitted on
a training split: the vocabulary is the model's input space, counted over all text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, IntegerType, LongType, StringType

from lakehouse import delta
from lakehouse.config import Config
from lakehouse.datasets import Dataset
from lakehouse.errors import ConfigError, SourceError, TableNotFoundError
from lakehouse.featuresets.contract import (
    ROW_FIELDS,
    Build,
    FeatureSet,
    Kind,
    build_once,
    built_meta,
    silver_rows,
)
from lakehouse.problems import SettingError
from lakehouse.tables import TRAINING_TABLE_PROPERTIES, TableSpec, _f, layer_table, register

log = logging.getLogger(__name__)

TOKEN_PATTERN = r"\p{L}+(?:'\p{L}+)*"
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
        (*ROW_FIELDS,
         _f("tokens", ArrayType(IntegerType()))),
        ("row_id",), partition_by=("split",), properties=TRAINING_TABLE_PROPERTIES,
        comment=f"word2vec training sentences of {dataset} as vocabulary ids"))
    return vocab, corpus


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


def build_metadata(spark: SparkSession, full_name: str,
                   version: int | None = None) -> dict[str, Any]:
    """The build metadata stored with a corpus commit (key, vocabulary version, settings).

    At ``version``, or else at the data version: the last build, whatever maintenance
    committed after it.

    Raises:
        TableNotFoundError: the commit at ``version`` carries no build metadata.
    """
    meta = built_meta(spark, full_name, version)
    if not meta and version is not None:
        raise TableNotFoundError(f"{full_name} v{version}: no word2vec build metadata; "
                                 f"rebuild it with `lakeforge features corpus`")
    return meta


def documents(spark: SparkSession, cfg: Config, entry: Dataset | None,
              corpora: tuple[str, ...] = ()) -> tuple[DataFrame, delta.Snapshot]:
    """The documents of a feature set: ``corpus``, ``doc_id``, ``text``, and their snapshot.

    ``corpus`` (no ``entry``) reads ``silver_documents`` (``corpora`` picks some); a text
    data set reads its own silver rows through its ``id`` and ``text`` roles.
    """
    if entry is None:
        silver = layer_table(cfg.catalog.database, "silver", "documents")
        pinned = delta.snapshot(spark, silver)
        docs = delta.read_version(spark, silver, pinned.version)   # maintenance keeps them
        if corpora:
            docs = docs.filter(F.col("corpus").isin(list(corpora)))
        return docs.select("corpus", "doc_id", "text"), pinned
    rows, pinned = silver_rows(spark, cfg, entry)
    return rows.select(F.lit(entry.name).alias("corpus"),
                       F.col(str(entry.roles["id"])).cast("string").alias("doc_id"),
                       F.col(str(entry.roles["text"])).cast("string").alias("text")), pinned


@dataclass(frozen=True)
class TextSettings:
    """How a text data set becomes a vocabulary and sentences of word ids.

    Attributes:
        min_count: the least count of a word in the vocabulary.
        max_sentence_length: the most word ids in one sentence (longer documents are
            cut into several).
        corpora: the bundled corpora of the ``corpus`` feature set (default: all).
    """

    min_count: int = 5
    max_sentence_length: int = 1000
    corpora: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("min_count", "max_sentence_length"):
            if getattr(self, key) < 1:
                raise SettingError(key, f"{getattr(self, key)!r} is not a whole number >= 1")
        object.__setattr__(self, "corpora", tuple(sorted(self.corpora)))

    @property
    def recorded(self) -> dict[str, Any]:
        """The settings as models record them."""
        return {"corpora": list(self.corpora) or None, "min_count": self.min_count,
                "max_sentence_length": self.max_sentence_length}


class TextKind(Kind):
    """Text data sets, and ``corpus``: every bundled corpus of ``silver_documents``.

    The gold tables are ``gold_word2vec_vocab[_<set>]`` (word_id, word, count) and
    ``gold_word2vec_corpus[_<set>]`` (row_id, split, tokens ARRAY<INT>); training reads
    the corpus, and the vocabulary version its commit names.
    """

    name = "text"
    settings = TextSettings
    params = ("min_count", "max_sentence_length", "corpora")

    def sets(self, cfg: Config) -> dict[str, Dataset | None]:
        """Each text data set, then ``corpus``."""
        return {**super().sets(cfg), ALL_CORPORA: None}

    def settings_of(self, entry: Dataset | None, params: Mapping[str, Any] | None = None,
                    where: str = "") -> TextSettings:
        """The declared settings with ``params`` over them; ``corpora`` is ``corpus``'s own."""
        if entry is not None and ("corpora" in (params or {}) or "corpora" in entry.features):
            raise ConfigError(f"text features: unknown parameter(s) corpora; known: "
                              f"min_count, max_sentence_length (corpora selects corpora of "
                              f"the feature set {ALL_CORPORA!r})")
        return super().settings_of(entry, params, where or (
            f"datasets.{entry.name}.features" if entry else f"{ALL_CORPORA} features"))

    def gold_spec(self, name: str, settings: TextSettings) -> TableSpec:
        """The sentence table (the vocabulary is :func:`corpus_specs`' first)."""
        return corpus_specs(name)[1]

    def build(self, spark: SparkSession, cfg: Config, name: str, entry: Dataset | None,
              settings: TextSettings, partitions: int | None) -> FeatureSet:
        """Build the vocabulary, then the sentences over it (each once per key).

        Returns:
            The corpus table: version, sentences (``rows``), vocabulary size
            (``n_features``).

        Raises:
            SourceError: no word reaches ``min_count``.
        """
        vocab_spec, corpus_spec = corpus_specs(name)
        docs, pinned = documents(spark, cfg, entry, settings.corpora)
        docs = docs.select("corpus", "doc_id", tokenise(F.col("text")).alias("tokens"))
        key = {"silver_version": pinned.data_version, **settings.recorded}
        vocab = build_once(spark, cfg, vocab_spec, key,
                           lambda: vocabulary(docs, settings.min_count), partitions=1, by=())
        if not vocab.rows(spark).limit(1).count():
            corpora = ", ".join(settings.corpora or ["all corpora"])
            raise SourceError(
                f"empty word2vec corpus: no word in {pinned.table} ({corpora}) occurs at "
                f"least min_count={settings.min_count} times; {vocab.table} "
                f"v{vocab.snapshot.data_version} is empty")
        vocab_version = vocab.snapshot.data_version
        corpus = build_once(
            spark, cfg, corpus_spec, {**key, "vocab_version": vocab_version},
            lambda: sentences(docs, vocab.rows(spark), settings.max_sentence_length),
            partitions=partitions, by=(),
            meta=lambda: {"silver_version": pinned.data_version,
                          "vocab_version": vocab_version, "params": settings.recorded})
        result = _feature_set(spark, name, corpus, vocab.table)
        log.info("word2vec corpus: %s v%d holds %d sentences over %d words (%s v%d, "
                 "min_count %d)", corpus.table, result.version, result.rows,
                 result.n_features, vocab.table, vocab_version, settings.min_count)
        return result


def _feature_set(spark: SparkSession, dataset: str, corpus: Build,
                 vocab_table: str) -> FeatureSet:
    """The corpus as built: sentences at its snapshot, words of the vocabulary it names."""
    rows = corpus.rows(spark).count()
    words = delta.read_data_version(spark, vocab_table, corpus.meta["vocab_version"]).count()
    return FeatureSet(dataset, corpus.table, corpus.snapshot.data_version, rows, words, 0, ())


KIND = TextKind()
