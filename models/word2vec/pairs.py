"""Vectorised word2vec sampling with NumPy: subsampling, dynamic windows, noise.

Everything here works on a rank's whole shard at once: ``ids`` (the token ids of
all its sentences, concatenated) and ``sent`` (the sentence index of each token),
so no Python loop runs per word.
"""

from __future__ import annotations

import numpy as np


def keep_probability(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each word in frequent-word subsampling (gensim's formula).

    ``(sqrt(c / t) + 1) * t / c`` capped at 1, with ``t = sample * total count``;
    ``sample <= 0`` keeps every word.

    Args:
        counts: corpus count of each word id.
        sample: the subsampling threshold (gensim ``sample``, e.g. 1e-3).

    Returns:
        A float array, one probability per word id.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones_like(counts)
    threshold = sample * counts.sum()
    prob = (np.sqrt(counts / threshold) + 1.0) * threshold / np.maximum(counts, 1.0)
    return np.minimum(prob, 1.0)


def noise_cdf(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """Cumulative noise distribution ``count ** power`` (normalised), for negatives."""
    weights = np.asarray(counts, dtype=np.float64) ** power
    cdf = np.cumsum(weights)
    return (cdf / cdf[-1]).astype(np.float64)


def flatten(sentences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ids and the sentence index of each token."""
    if not sentences:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
    ids = np.concatenate(sentences).astype(np.int32)
    return ids, np.repeat(np.arange(len(sentences), dtype=np.int32), lengths)


def subsample(ids: np.ndarray, sent: np.ndarray, keep: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Drop frequent words at random (before windows are formed, as gensim does)."""
    kept = rng.random(len(ids)) < keep[ids]
    return ids[kept], sent[kept]


def skipgram_pairs(ids: np.ndarray, sent: np.ndarray, window: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Skip-gram (input word, predicted word) pairs with a dynamic window.

    As in gensim, each centre word draws a reduced window ``b`` in ``[0, window)``
    and the words within ``window - b`` positions of the same sentence predict it:
    the context word's input vector is trained to predict the centre word.

    Returns:
        ``(inputs, outputs)`` int32 arrays of equal length.
    """
    reach = window - rng.integers(0, window, size=len(ids))
    inputs, outputs = [], []
    for d in range(1, window + 1):
        same = sent[:-d] == sent[d:]
        right = same & (reach[:-d] >= d)          # centre i, context i + d
        left = same & (reach[d:] >= d)            # centre i + d, context i
        inputs += [ids[d:][right], ids[:-d][left]]
        outputs += [ids[:-d][right], ids[d:][left]]
    if not inputs:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(inputs), np.concatenate(outputs)


def cbow_windows(ids: np.ndarray, sent: np.ndarray, window: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CBOW examples: the context ids of each centre word (``-1`` pads), and the centre.

    Centres without any context word (one-word sentences) are left out.

    Returns:
        ``(contexts, centres)``: an int32 ``(n, 2 * window)`` array and an ``(n,)`` array.
    """
    n = len(ids)
    reach = window - rng.integers(0, window, size=n)
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])
    pos = np.arange(n)[:, None] + offsets[None, :]
    inside = (pos >= 0) & (pos < n)
    clipped = np.clip(pos, 0, max(n - 1, 0))
    valid = inside & (np.abs(offsets)[None, :] <= reach[:, None])
    if n:
        valid &= sent[clipped] == sent[:, None]
    contexts = np.where(valid, ids[clipped] if n else clipped, -1).astype(np.int32)
    has = valid.any(axis=1)
    return contexts[has], ids[has]


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous near-equal ``[start, stop)`` ranges over ``n`` items."""
    edges = np.linspace(0, n, parts + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
