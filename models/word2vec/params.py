"""Training parameters of the word2vec family (gensim's defaults where gensim has one)."""

from __future__ import annotations

from dataclasses import dataclass

from lakehouse.errors import ConfigError
from lakehouse.params import at_least, one_of


@dataclass(frozen=True)
class Word2VecParams:
    """Skip-gram (or CBOW) with negative sampling.

    Attributes:
        dim: vector size.
        window: most words on each side of a centre word.
        negative: noise words per positive pair.
        sample: down-sampling threshold of frequent words (0: none).
        alpha: learning rate at the start, decaying linearly to ``min_alpha``.
        min_alpha: learning rate at the end.
        epochs: passes over the corpus.
        sg: 1 for skip-gram, 0 for CBOW.
        batch_pairs: pairs per SGD step.
        block_batches: steps per compiled call.
        sync_words: words each rank trains between synchronisations.
        neighbours: the k of scoring's nearest neighbours.
    """

    dim: int = 100
    window: int = 5
    negative: int = 5
    sample: float = 1e-3
    alpha: float = 0.025
    min_alpha: float = 0.0001
    epochs: int = 5
    sg: int = 1
    batch_pairs: int = 512
    block_batches: int = 32
    sync_words: int = 200_000
    neighbours: int = 10

    def __post_init__(self) -> None:
        at_least("word2vec", self, 1, "dim", "window", "negative", "epochs", "batch_pairs",
                 "block_batches", "sync_words", "neighbours")
        at_least("word2vec", self, 0.0, "sample")
        one_of("word2vec", self, "sg", (1, 0))
        if not 0 < self.min_alpha <= self.alpha:
            raise ConfigError(f"word2vec parameters min_alpha={self.min_alpha!r} and "
                              f"alpha={self.alpha!r}: need 0 < min_alpha <= alpha")
