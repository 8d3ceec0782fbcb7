"""A robust random cut forest (Guha et al., 2016) in vectorised NumPy.

Every tree of the forest lives in flat arrays (child ids, cut dimension and value,
bounding boxes, point counts) and all trees are built together, one level of the
whole forest per NumPy step, so building costs a few dozen array operations rather
than a Python call per point. Cuts pick a dimension in proportion to its range and
a value uniformly within it.

Scoring a point is its collusive displacement (CoDisp) as if it were inserted into
each tree, averaged over trees. Insertion follows the robust RCF rule: at each node
a random cut over the bounding box grown by the point either separates the point
(it becomes a new leaf beside that node) or the point descends by the node's cut.
With the new leaf beside node ``n``, the displacement ratios along its path are
``count[n] / 1`` and, above, ``count[sibling] / (count[node] + 1)``; the running
maximum of the latter from the root down is stored per node (``up``), so a
point's CoDisp is ``max(count[n], up[n])`` and no tree is modified. All points of a
batch descend all trees at once.

Trees may be capped in depth (``max_depth``), like IsolationForest's height limit:
a capped leaf holds several points, and a point falling inside its box joins it
rather than being cut out, so the score becomes a coarser, density-like measure
(what finds a stretch at a rare level rather than a rare shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FOREST_FILE = "forest.npz"


@dataclass(frozen=True)
class Forest:
    """Flat arrays of every node of every tree (roots are ``0 .. n_trees - 1``)."""

    left: np.ndarray       # int32, -1 for leaves; right child is left + 1
    cut_dim: np.ndarray    # int32
    cut_val: np.ndarray    # float64
    count: np.ndarray      # int64, points under the node
    lo: np.ndarray         # (nodes, d) bounding box minimum
    hi: np.ndarray         # (nodes, d) bounding box maximum
    up: np.ndarray         # float64, max count[sibling] / (count[node] + 1) on the path
    n_trees: int

    @property
    def dim(self) -> int:
        """Shingle size (points are vectors of this length)."""
        return int(self.lo.shape[1])

    def save(self, folder: str | Path) -> Path:
        """Write the forest to ``folder/forest.npz``."""
        path = Path(folder) / FOREST_FILE
        np.savez_compressed(path, left=self.left, cut_dim=self.cut_dim, cut_val=self.cut_val,
                            count=self.count, lo=self.lo, hi=self.hi, up=self.up,
                            n_trees=np.int64(self.n_trees))
        return path


def load_forest(folder: str | Path) -> Forest:
    """Read ``folder/forest.npz`` written by :meth:`Forest.save`."""
    with np.load(Path(folder) / FOREST_FILE) as z:
        return Forest(z["left"], z["cut_dim"], z["cut_val"], z["count"], z["lo"], z["hi"],
                      z["up"], int(z["n_trees"]))


def merge(forests: list[Forest]) -> Forest:
    """One forest holding the trees of several (e.g. one per Horovod rank).

    The merged layout keeps every root first (ids ``0 .. n_trees - 1``), then each
    part's other nodes in order; child ids are renumbered to match.
    """
    forests = [f for f in forests if f.n_trees]
    root_base = np.cumsum([0] + [f.n_trees for f in forests])
    body_base = np.cumsum([root_base[-1]] + [len(f.left) - f.n_trees for f in forests])

    def renumber(k: int, ids: np.ndarray) -> np.ndarray:
        trees = forests[k].n_trees
        return np.where(ids < trees, root_base[k] + ids, body_base[k] + ids - trees)

    total, d = int(body_base[-1]), forests[0].dim
    left = np.full(total, -1, np.int32)
    arrays = {"cut_dim": np.zeros(total, np.int32), "cut_val": np.zeros(total),
              "count": np.zeros(total, np.int64), "lo": np.zeros((total, d)),
              "hi": np.zeros((total, d)), "up": np.zeros(total)}
    for k, f in enumerate(forests):
        ids = renumber(k, np.arange(len(f.left)))
        left[ids] = np.where(f.left >= 0, renumber(k, np.maximum(f.left, 0)), -1)
        for name, values in arrays.items():
            values[ids] = getattr(f, name)
    return Forest(left=left, **arrays, n_trees=int(root_base[-1]))


def reservoir_samples(batches, n_trees: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uniform reservoir sample of ``size`` points per tree from a stream of batches.

    Algorithm R for all trees at once: the k-th point seen replaces slot
    ``j ~ U{0..k}`` of a tree's reservoir when ``j < size``.

    Args:
        batches: iterable of (rows, d) arrays.
        n_trees: number of reservoirs.
        size: points per reservoir.
        rng: random generator.

    Returns:
        (n_trees, min(size, points seen), d) array.
    """
    reservoir, seen = None, 0
    for batch in batches:
        batch = np.asarray(batch, dtype=np.float64)
        if batch.size == 0:
            continue
        if reservoir is None:
            reservoir = np.empty((n_trees, size, batch.shape[1]))
        fill = min(max(size - seen, 0), len(batch))
        if fill:
            reservoir[:, seen:seen + fill] = batch[:fill]
        rest = batch[fill:]
        if len(rest):
            k = seen + fill + np.arange(len(rest))                # global index of each point
            slots = rng.integers(0, k + 1, size=(n_trees, len(rest)))
            tree, point = np.nonzero(slots < size)
            reservoir[tree, slots[tree, point]] = rest[point]
        seen += len(batch)
    if reservoir is None:
        raise ValueError("no points to sample trees from")
    return reservoir[:, :min(size, seen)]


def build_forest(samples: np.ndarray, rng: np.random.Generator,
                 max_depth: int | None = None) -> Forest:
    """Build one tree per sample set, all trees level by level.

    Args:
        samples: (n_trees, points, d) array; tree ``i`` is built on ``samples[i]``.
        rng: random generator for the cuts.
        max_depth: stop cutting at this depth (the root is depth 0), leaving leaves
            that hold several points, as IsolationForest's height limit does; ``None``
            or 0 cuts until every leaf holds one distinct point (Guha et al.).

    Returns:
        The forest.
    """
    n_trees, size, d = samples.shape
    points = samples.reshape(n_trees * size, d).astype(np.float64)
    cap = n_trees * max(2 * size - 1, 1)
    left = np.full(cap, -1, np.int32)
    cut_dim, cut_val = np.zeros(cap, np.int32), np.zeros(cap)
    count, parent = np.zeros(cap, np.int64), np.full(cap, -1, np.int64)
    lo, hi = np.zeros((cap, d)), np.zeros((cap, d))
    node = np.repeat(np.arange(n_trees), size)
    active = np.arange(len(points))
    n_nodes, levels = n_trees, []
    depth, limit = 0, max_depth or np.inf
    while active.size:
        active = active[np.argsort(node[active], kind="stable")]
        ids, starts, counts = np.unique(node[active], return_index=True, return_counts=True)
        lo[ids] = np.minimum.reduceat(points[active], starts)
        hi[ids] = np.maximum.reduceat(points[active], starts)
        count[ids] = counts
        span = hi[ids] - lo[ids]
        split = (counts > 1) & (span.sum(axis=1) > 0) & (depth < limit)    # else a leaf
        ids, span = ids[split], span[split]
        active = active[np.repeat(split, counts)]
        if not ids.size:
            break
        dims, cuts = _random_cuts(lo[ids], span, rng)
        cut_dim[ids], cut_val[ids] = dims, cuts
        left[ids] = n_nodes + 2 * np.arange(len(ids))
        children = np.stack([left[ids], left[ids] + 1], axis=1).ravel()
        parent[children] = np.repeat(ids, 2)
        levels.append(children)
        n_nodes += 2 * len(ids)
        at = np.searchsorted(ids, node[active])
        goes_right = points[active, dims[at]] > cuts[at]
        node[active] = left[ids][at] + goes_right
        depth += 1
    up = np.zeros(n_nodes)     # parents come before children, so one pass per level
    for children in levels:
        sibling = _sibling(children, left, parent)
        up[children] = np.maximum(up[parent[children]], count[sibling] / (count[children] + 1))
    return Forest(left[:n_nodes], cut_dim[:n_nodes], cut_val[:n_nodes], count[:n_nodes],
                  lo[:n_nodes], hi[:n_nodes], up, n_trees)


def _sibling(children: np.ndarray, left: np.ndarray, parent: np.ndarray) -> np.ndarray:
    first = left[parent[children]]
    return np.where(children == first, first + 1, first)


def _random_cuts(lo: np.ndarray, span: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A cut per box: dimension in proportion to its range, value uniform within it."""
    ranges = np.cumsum(span, axis=1)
    r = rng.random(len(span)) * ranges[:, -1]
    dims = np.minimum((r[:, None] >= ranges).sum(axis=1), span.shape[1] - 1)
    before = np.where(dims > 0, ranges[np.arange(len(dims)), np.maximum(dims - 1, 0)], 0.0)
    cuts = lo[np.arange(len(dims)), dims] + (r - before)
    return dims.astype(np.int32), cuts


def codisp(forest: Forest, points: np.ndarray, rng: np.random.Generator | None = None,
           chunk: int = 4096) -> np.ndarray:
    """Collusive displacement of each point, inserted into every tree, averaged.

    Args:
        forest: the forest.
        points: (n, d) array of shingles.
        rng: random generator for the insertion cuts, as rrcf draws them; ``None``
            (the default) takes the expectation over those cuts instead: at each
            node the chance that the cut separates the point is the share of the
            grown box's range that lies outside the node's box, so each tree's
            score is the average over every place the point could be inserted,
            weighted by its probability. Same mean, less noise, deterministic.
        chunk: points scored together (bounds memory to about chunk x trees x d).

    Returns:
        (n,) scores; higher is more anomalous.
    """
    points = _checked(forest, points)
    out = np.empty(len(points))
    for start in range(0, len(points), chunk):
        part = points[start:start + chunk]
        out[start:start + chunk] = (_expected_chunk(forest, part, False) if rng is None
                                    else _codisp_chunk(forest, part, rng))
    return out


def attribution(forest: Forest, points: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Each dimension's share of each point's expected CoDisp (:func:`codisp`, ``rng=None``).

    At every node the chance that the insertion cut separates the point is the sum,
    over dimensions, of the range the point lies outside the node's box in that
    dimension, over the grown box's range; each dimension is credited with its own
    part of that chance times what the separation would displace. What a point
    displaces when it joins a leaf without a cut in any dimension (a duplicate, or a
    point inside a depth-capped leaf's box) is shared out evenly. Rows therefore sum
    to the expected CoDisp (as AWS's RCF attributes a score to the dimensions that
    made it).

    Args:
        forest: the forest.
        points: (n, d) array of shingles.
        chunk: points attributed together.

    Returns:
        (n, d) array; ``attribution(f, x).sum(axis=1)`` is ``codisp(f, x)`` to rounding.
    """
    points = _checked(forest, points)
    out = np.empty(points.shape)
    for start in range(0, len(points), chunk):
        out[start:start + chunk] = _expected_chunk(forest, points[start:start + chunk], True)
    return out


def _checked(forest: Forest, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != forest.dim:
        raise ValueError(f"points have shape {points.shape}, the forest expects (n, {forest.dim})")
    return points


def _expected_chunk(forest: Forest, x: np.ndarray, per_dim: bool) -> np.ndarray:
    """Expected CoDisp of each point of ``x``, or per dimension when ``per_dim``."""
    n, t, d = len(x), forest.n_trees, forest.dim
    point = np.repeat(np.arange(n), t)
    node = np.tile(np.arange(t), n)
    score = np.zeros((n * t, d) if per_dim else n * t)
    remain = np.ones(n * t)
    pending = np.arange(n * t)
    while pending.size:
        nd, xp = node[pending], x[point[pending]]
        lo, hi = forest.lo[nd], forest.hi[nd]
        outside_by_dim = np.maximum(lo - xp, 0) + np.maximum(xp - hi, 0)
        outside = outside_by_dim.sum(axis=1)
        total = (np.maximum(hi, xp) - np.minimum(lo, xp)).sum(axis=1)
        inverse = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
        p = outside * inverse
        leaf = forest.left[nd] < 0
        here = np.maximum(forest.count[nd], forest.up[nd])
        # A leaf of one distinct point separates the point for sure (p = 1) or takes in
        # a duplicate (p = 0); a depth-capped leaf's box takes in a point inside it.
        # Taken in, the point displaces what its new parent's sibling holds: up[nd].
        joined = np.where(leaf, (1 - p) * forest.up[nd], 0.0)
        weight = remain[pending]
        if per_dim:
            score[pending] += (outside_by_dim * (weight * inverse * here)[:, None]
                               + (weight * joined / d)[:, None])
        else:
            score[pending] += weight * (p * here + joined)
        remain[pending] *= 1 - p
        go = ~leaf
        nd, xp, pending = nd[go], xp[go], pending[go]
        right = xp[np.arange(len(nd)), forest.cut_dim[nd]] > forest.cut_val[nd]
        node[pending] = forest.left[nd] + right
    return score.reshape(n, t, d).mean(axis=1) if per_dim else score.reshape(n, t).mean(axis=1)


def _codisp_chunk(forest: Forest, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, t = len(x), forest.n_trees
    point = np.repeat(np.arange(n), t)
    node = np.tile(np.arange(t), n)
    score = np.zeros(n * t)
    pending = np.arange(n * t)
    while pending.size:
        nd, xp = node[pending], x[point[pending]]
        lo, hi = forest.lo[nd], forest.hi[nd]
        mlo, mhi = np.minimum(lo, xp), np.maximum(hi, xp)
        span = mhi - mlo
        total = span.sum(axis=1)
        dims, cuts = _random_cuts(mlo, span, rng)
        rows = np.arange(len(nd))
        separated = (total > 0) & ((cuts <= lo[rows, dims]) | (cuts >= hi[rows, dims]))
        leaf = forest.left[nd] < 0
        done = separated | leaf
        # Separated: a new leaf beside nd. Not separated at a leaf (a duplicate, or a point
        # inside a depth-capped leaf's box): it joins the leaf and displaces up[nd].
        score[pending[done]] = np.where(separated[done],
                                        np.maximum(forest.count[nd[done]], forest.up[nd[done]]),
                                        forest.up[nd[done]])
        go = ~done
        nd, xp, pending = nd[go], xp[go], pending[go]
        right = xp[np.arange(len(nd)), forest.cut_dim[nd]] > forest.cut_val[nd]
        node[pending] = forest.left[nd] + right
    return score.reshape(n, t).mean(axis=1)
