"""Word vectors as a lookup object, and their intrinsic evaluation.

* Word similarity: Spearman correlation between human ratings (WordSim-353,
  SimLex-999) and cosine similarity, over the pairs whose two words are in the
  vocabulary (the share is reported as coverage).
* Analogies (Google's questions-words): 3CosAdd over unit-normalised vectors,
  ``argmax cos(x, b - a + c)`` excluding ``a``, ``b`` and ``c``, over the questions
  whose four words are in the vocabulary.
* A PNG of a few query words and their nearest neighbours in a 2-D PCA projection.

Words are compared in lower case, as the corpus is tokenised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.word2vec.rank import EMBEDDINGS_FILE

VOCAB_FILE = "vocab.json"
QUERY_WORDS = ("king", "war", "water", "music", "god", "city", "game", "science")


@dataclass(frozen=True)
class Embeddings:
    """Word vectors with a word index; rows of ``unit`` have length one."""

    words: list[str]
    vectors: np.ndarray
    index: dict[str, int] = field(init=False)
    unit: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.words)})
        object.__setattr__(self, "unit", (self.vectors / np.maximum(norms, 1e-12))
                           .astype(np.float32))

    @classmethod
    def load(cls, artifact: str | Path) -> Embeddings:
        """Read ``embeddings.npy`` and ``vocab.json`` from an artifact folder."""
        words = json.loads(Path(artifact, VOCAB_FILE).read_text())
        return cls(words, np.load(os.path.join(artifact, EMBEDDINGS_FILE)))

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two in-vocabulary words."""
        return float(self.unit[self.index[a]] @ self.unit[self.index[b]])

    def neighbours(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` words with the highest cosine similarity to ``word`` (itself left out).

        Raises:
            KeyError: naming the word when it is not in the vocabulary.
        """
        key = word.lower()
        if key not in self.index:
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self.words)} words)")
        ids, sims = top_k(self.unit, self.unit[[self.index[key]]], k, [[self.index[key]]])
        return [(self.words[i], float(s)) for i, s in zip(ids[0], sims[0], strict=True)]


def top_k(unit: np.ndarray, queries: np.ndarray, k: int,
          exclude: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row ids and cosine similarities of the ``k`` nearest rows to each query vector.

    Args:
        unit: unit-normalised vectors (n, d).
        queries: query vectors (q, d), unit-normalised.
        k: neighbours per query.
        exclude: per query, row ids never returned (e.g. the query word itself).

    Returns:
        ``(ids, sims)``, each (q, k), best first.
    """
    scores = queries @ unit.T
    if exclude is not None:
        for row, ids in enumerate(exclude):
            scores[row, np.asarray(ids, dtype=np.int64)] = -np.inf
    most = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    k = max(0, min(k, unit.shape[0] - most))
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k else scores[:, :0].astype(int)
    best = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(best, order, axis=1)


def similarity_spearman(emb: Embeddings,
                        rated: Iterable[tuple[str, str, float]]) -> tuple[float, float]:
    """Spearman correlation of human ratings with cosine similarity, and coverage.

    Returns:
        ``(rho, coverage)``; rho is NaN with fewer than 3 covered pairs.
    """
    from scipy.stats import spearmanr

    rated = list(rated)
    human, model = [], []
    for a, b, score in rated:
        a, b = a.lower(), b.lower()
        if a in emb.index and b in emb.index:
            human.append(score)
            model.append(emb.similarity(a, b))
    coverage = len(human) / len(rated) if rated else 0.0
    if len(human) < 3:
        return float("nan"), coverage
    return float(spearmanr(human, model).statistic), coverage


def analogy_accuracy(emb: Embeddings, questions: Iterable[Sequence[str]],
                     batch: int = 1024) -> tuple[float, float]:
    """3CosAdd accuracy over the questions whose four words are in the vocabulary.

    Returns:
        ``(accuracy, coverage)``; accuracy is NaN when no question is covered.
    """
    questions = [tuple(w.lower() for w in q) for q in questions]
    covered = np.array([[emb.index[w] for w in q] for q in questions
                        if all(w in emb.index for w in q)], dtype=np.int64).reshape(-1, 4)
    coverage = len(covered) / len(questions) if questions else 0.0
    if not len(covered):
        return float("nan"), coverage
    right = 0
    for start in range(0, len(covered), batch):
        q = covered[start:start + batch]
        target = emb.unit[q[:, 1]] - emb.unit[q[:, 0]] + emb.unit[q[:, 2]]
        target /= np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
        ids, _ = top_k(emb.unit, target, 1, q[:, :3])
        right += int((ids[:, 0] == q[:, 3]).sum())
    return right / len(covered), coverage


def plot_neighbours(emb: Embeddings, path: Path, title: str,
                    queries: Sequence[str] = QUERY_WORDS, k: int = 6) -> Path | None:
    """A 2-D PCA scatter of query words (bold) and their nearest neighbours, as PNG.

    When none of the query words is in the vocabulary, the most frequent words are
    the queries.

    Returns:
        The path, or None when the vocabulary has fewer than two words.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(emb.words) < 2:
        return None
    present = [q for q in queries if q in emb.index][:6] or emb.words[:6]
    k = min(k, len(emb.words) - 1)
    groups = [[q, *(w for w, _ in emb.neighbours(q, k))] for q in present]
    rows = [emb.index[w] for g in groups for w in g]
    points = emb.unit[rows] - emb.unit[rows].mean(axis=0)
    _, _, vt = np.linalg.svd(points, full_matrices=False)
    xy = points @ vt[:2].T
    fig, ax = plt.subplots(figsize=(8, 6.5), dpi=110)
    colours = plt.get_cmap("tab10")
    at = 0
    for n, group in enumerate(groups):
        part = xy[at:at + len(group)]
        ax.scatter(part[:, 0], part[:, 1], color=colours(n), s=18)
        for (x, y), word in zip(part, group, strict=True):
            ax.annotate(word, (x, y), fontsize=9 if word == group[0] else 7,
                        fontweight="bold" if word == group[0] else "normal", color=colours(n))
        at += len(group)
    ax.set_title(title)
    ax.set_xlabel("PCA 1")
    ax.set_ylabel("PCA 2")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
