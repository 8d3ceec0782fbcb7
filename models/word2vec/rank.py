"""Executor side of word2vec: what each Horovod rank runs.

Each rank reads its shard of the pinned corpus snapshot with Petastorm
(``make_batch_reader(..., cur_shard=rank, shard_count=size)``) once, keeps it as
one id array, and for every epoch draws the subsampling and the dynamic windows
with NumPy (:mod:`models.word2vec.pairs`). Training is plain SGD with sparse
updates, as in the original word2vec and gensim: an XLA-compiled ``tf.function``
takes a block of ``block_batches`` batches of ``batch_pairs`` (input, output) pairs
and loops over them; for each batch it draws ``negative`` noise words per pair from
the unigram^0.75 table and applies the gradients with ``scatter_add`` to the rows
it touched (a row that occurs several times in a batch gets the sum of its
updates, as from several Hogwild threads). Batches of about a thousand pairs keep
the result as good as gensim's sequential updates (larger ones lose quality on
this corpus size), and the compiled loop keeps the per-batch cost low. The
learning rate decays linearly from ``alpha`` to ``min_alpha`` over all words of
all epochs.

Ranks synchronise by *local SGD*: each trains on its own shard for
``sync_words`` words, then the ranks add up the changes they made since the last
synchronisation with ``hvd.allreduce`` (so a row only one rank touched keeps its
whole update) and continue from the same matrices; they do so at every epoch end
too, so every rank ends with identical embeddings. Rank 0 checkpoints after each
epoch (a run started again resumes from the last one) and writes the artifact:
``embeddings.npy`` (the input vectors).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lakehouse.lakefs import LakeFS
from models.rank import artifact_folder, last_checkpoint, save_checkpoint, start_rank
from models.word2vec import pairs

CKPT_PATTERN = re.compile(r"^epoch-(\d+)\.npz$")
EMBEDDINGS_FILE = "embeddings.npy"


@dataclass(frozen=True)
class Word2VecSpec:
    """Everything a rank needs, as plain values."""

    params: dict[str, Any]
    files: list[str]                     # Parquet files of the pinned corpus snapshot
    counts: list[int]                    # corpus count of each word id
    checkpoint_dir: str                  # lake locations
    artifact_dir: str
    seed: int = 7
    lake: LakeFS = field(default_factory=LakeFS)


def digest(*arrays: np.ndarray) -> str:
    """A short hash of arrays (ranks compare their final embeddings with it)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _tokens_as_bytes(df):
    """Petastorm transform: variable-length id lists as int32 bytes.

    Petastorm stacks list columns into a matrix, which needs equal lengths; a binary
    column passes through as it is.
    """
    df["tokens"] = df["tokens"].map(
        lambda t: np.asarray(t if t is not None else [], dtype=np.int32).tobytes())
    return df


def read_shard(lake: LakeFS, files: list[str], rank: int,
               size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sentences of shard ``rank`` from Petastorm, flattened to ids and sentence indices."""
    from petastorm import make_batch_reader
    from petastorm.transform import TransformSpec

    spec = TransformSpec(_tokens_as_bytes, edit_fields=[("tokens", np.bytes_, (), False)])
    sentences: list[np.ndarray] = []
    with make_batch_reader(files, schema_fields=["tokens"], cur_shard=rank, shard_count=size,
                           num_epochs=1, shuffle_row_groups=False, workers_count=1,
                           reader_pool_type="dummy", transform_spec=spec,
                           filesystem=lake.petastorm_filesystem(files[0])) as reader:
        for batch in reader:
            sentences.extend(s for s in (np.frombuffer(b, dtype=np.int32) for b in batch.tokens)
                             if len(s))
    return pairs.flatten(sentences)


def initial_weights(vocab: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Initial weights as gensim draws them: inputs uniform in ±0.5/dim, outputs zero."""
    rng = np.random.default_rng(seed)
    w_in = ((rng.random((vocab, dim)) - 0.5) / dim).astype(np.float32)
    return w_in, np.zeros((vocab, dim), np.float32)


def noise_table(counts: np.ndarray, size: int = 10_000_000) -> np.ndarray:
    """word2vec's unigram table: word ids laid out by ``count ** 0.75`` share."""
    size = int(min(size, max(1_000_000, 200 * len(counts))))
    return np.searchsorted(pairs.noise_cdf(counts), (np.arange(size) + 0.5) / size) \
        .astype(np.int32)


def make_steps(tf, w_in, w_out, table: np.ndarray, negative: int, seed: int):
    """Compiled (XLA) skip-gram and CBOW SGD over variables ``w_in``/``w_out``.

    Each call takes a block of ``S`` sub-batches and loops over them inside the
    compiled function, so updates are applied sub-batch after sub-batch (close to
    sequential SGD) without a Python round trip per sub-batch.

    Returns:
        ``(sg_block, cbow_block)``: ``sg_block(inputs, outputs, valid, alphas)`` and
        ``cbow_block(contexts, centres, valid, alphas)`` with leading shape ``(S, b)``,
        each returning the block's summed loss.
    """
    noise = tf.constant(table)
    gen = tf.random.Generator.from_seed(seed)
    dim = w_in.shape[1]

    def output_side(l1, centres, valid, alpha):
        n = tf.shape(centres)[0]
        neg = tf.gather(noise, gen.uniform([n, negative], 0, noise.shape[0], dtype=tf.int32))
        words = tf.concat([centres[:, None], neg], axis=1)
        out = tf.gather(w_out, words)
        logits = tf.einsum("bd,bkd->bk", l1, out)
        labels = tf.concat([tf.ones([n, 1]), tf.zeros([n, negative])], axis=1)
        mask = tf.concat([tf.ones([n, 1]), tf.cast(neg != centres[:, None], tf.float32)], 1)
        mask *= valid[:, None]
        g = (labels - tf.sigmoid(logits)) * alpha * mask
        loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits) * mask)
        w_out.scatter_add(tf.IndexedSlices(
            tf.reshape(g[:, :, None] * l1[:, None, :], [-1, dim]), tf.reshape(words, [-1])))
        return tf.einsum("bk,bkd->bd", g, out), loss

    @tf.function(jit_compile=True)
    def sg_block(inputs, outputs, valid, alphas):
        loss = tf.constant(0.0)
        for s in tf.range(tf.shape(inputs)[0]):
            neu1e, part = output_side(tf.gather(w_in, inputs[s]), outputs[s], valid[s],
                                      alphas[s])
            w_in.scatter_add(tf.IndexedSlices(neu1e, inputs[s]))
            loss += part
        return loss

    @tf.function(jit_compile=True)
    def cbow_block(contexts, centres, valid, alphas):
        loss = tf.constant(0.0)
        for s in tf.range(tf.shape(contexts)[0]):
            ctx = contexts[s]
            weight = tf.cast(ctx >= 0, tf.float32)
            idx = tf.maximum(ctx, 0)
            count = tf.maximum(tf.reduce_sum(weight, axis=1, keepdims=True), 1.0)
            l1 = tf.reduce_sum(tf.gather(w_in, idx) * weight[:, :, None], axis=1) / count
            neu1e, part = output_side(l1, centres[s], valid[s], alphas[s])
            # gensim (cbow_mean=1) adds the whole error to every context word.
            w_in.scatter_add(tf.IndexedSlices(
                tf.reshape(neu1e[:, None, :] * weight[:, :, None], [-1, dim]),
                tf.reshape(idx, [-1])))
            loss += part
        return loss

    return sg_block, cbow_block


def train_word2vec_rank(spec: Word2VecSpec) -> dict[str, Any]:
    """Train on this rank's shard; rank 0 checkpoints and writes ``embeddings.npy``.

    Returns:
        ``rank``, ``size``, ``digest`` (of the final input and output vectors),
        ``initial_epoch``, ``epochs_run``, ``words`` (corpus words this rank
        processed), ``pairs``, ``train_seconds``, ``history`` (``loss`` per epoch,
        averaged over the ranks' examples).
    """
    hvd = start_rank()
    import tensorflow as tf

    threads = max(1, (os.cpu_count() or 1) // hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    p, epochs = spec.params, int(spec.params["epochs"])
    counts = np.asarray(spec.counts, dtype=np.int64)
    ids, sent = read_shard(spec.lake, spec.files, hvd.rank(), hvd.size())
    initial_epoch, ckpt = last_checkpoint(spec.lake, spec.checkpoint_dir, CKPT_PATTERN)
    state = _State(tf, hvd, *_start_weights(ckpt, len(counts), int(p["dim"]), spec.seed))
    steps = make_steps(tf, state.w_in, state.w_out, noise_table(counts), int(p["negative"]),
                       spec.seed * 1009 + hvd.rank())
    words = int(state.reduce([len(ids)], hvd.Sum)[0])
    parts = max(1, math.ceil(int(state.reduce([len(ids)], hvd.Max)[0]) / int(p["sync_words"])))
    history: dict[str, list[float]] = {"loss": []}
    trained = {"words": 0, "pairs": 0, "seconds": 0.0}
    for epoch in range(initial_epoch, epochs):
        started = time.monotonic()
        rng = np.random.default_rng([spec.seed, hvd.rank(), epoch])
        loss, examples = 0.0, 0
        for part, (a, b) in enumerate(pairs.chunks(len(ids), parts)):
            done = (epoch * words + hvd.size() * a) / max(words * epochs, 1)
            span = hvd.size() * (b - a) / max(words * epochs, 1)
            part_loss, n = _train_chunk(ids[a:b], sent[a:b], counts, p, rng, steps, done, span)
            loss, examples = loss + part_loss, examples + n
            state.merge(f"w2v.e{epoch}.p{part}")
        seconds = time.monotonic() - started
        trained = {"words": trained["words"] + len(ids), "pairs": trained["pairs"] + examples,
                   "seconds": trained["seconds"] + seconds}
        totals = state.reduce([loss, float(examples)], hvd.Sum)
        history["loss"].append(float(totals[0] / max(totals[1], 1.0)))
        if hvd.rank() == 0:
            save_checkpoint(spec.lake, functools.partial(
                _save_weights, w_in=state.w_in.numpy(), w_out=state.w_out.numpy()),
                spec.checkpoint_dir, epoch + 1, suffix=".npz")
            print(f"[lakeforge word2vec] epoch {epoch + 1}/{epochs} ({hvd.size()} ranks, "
                  f"{seconds:.1f}s): loss={history['loss'][-1]:.4f} "
                  f"{words / seconds:,.0f} words/s", flush=True)
    final_in, final_out = state.w_in.numpy(), state.w_out.numpy()
    if hvd.rank() == 0:
        with artifact_folder(spec.lake, spec.artifact_dir) as folder:
            np.save(os.path.join(folder, EMBEDDINGS_FILE), final_in)
    return {"rank": hvd.rank(), "size": hvd.size(), "digest": digest(final_in, final_out),
            "initial_epoch": initial_epoch, "epochs_run": len(history["loss"]),
            "train_seconds": trained["seconds"], "words": trained["words"],
            "pairs": trained["pairs"], "history": history, "syncs_per_epoch": parts}


def _start_weights(ckpt: str | None, vocab: int, dim: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The last checkpoint's matrices, or fresh ones (same seed on every rank)."""
    if ckpt is None:
        return initial_weights(vocab, dim, seed)
    with np.load(ckpt) as saved:
        return saved["w_in"], saved["w_out"]


class _State:
    """The rank's variables, and for local SGD the matrices as of the last synchronisation."""

    def __init__(self, tf, hvd, w_in: np.ndarray, w_out: np.ndarray) -> None:
        self.tf, self.hvd = tf, hvd
        self.w_in, self.w_out = tf.Variable(w_in), tf.Variable(w_out)
        self.base = [w_in.copy(), w_out.copy()]
        self.calls = 0

    def reduce(self, values: list[float], op) -> np.ndarray:
        """``values`` combined over the ranks with ``op`` (Sum, Max)."""
        self.calls += 1
        return self.hvd.allreduce(self.tf.constant(np.asarray(values, np.float64)), op=op,
                                  name=f"w2v.reduce{self.calls}").numpy()

    def merge(self, name: str) -> None:
        """Add up every rank's change since the last merge; all ranks end equal."""
        if self.hvd.size() == 1:
            return
        for i, var in enumerate((self.w_in, self.w_out)):
            change = var.numpy() - self.base[i]
            summed = self.hvd.allreduce(self.tf.constant(change), op=self.hvd.Sum,
                                        name=f"{name}.{i}").numpy()
            self.base[i] = self.base[i] + summed
            var.assign(self.base[i])


def _train_chunk(ids: np.ndarray, sent: np.ndarray, counts: np.ndarray, p: dict[str, Any],
                 rng: np.random.Generator, steps, done: float,
                 span: float) -> tuple[float, int]:
    """SGD over one chunk of a shard; returns its summed loss and example count.

    ``done`` and ``span``: where the chunk starts in all training, and its share of
    it (both in [0, 1]), for the learning-rate schedule.
    """
    sg_block, cbow_block = steps
    ids, sent = pairs.subsample(ids, sent, pairs.keep_probability(counts, float(p["sample"])),
                                rng)
    window, batch = int(p["window"]), int(p["batch_pairs"])
    if int(p["sg"]):
        x, y = pairs.skipgram_pairs(ids, sent, window, rng)
        step = sg_block
    else:
        x, y = pairs.cbow_windows(ids, sent, window, rng)
        step, batch = cbow_block, max(1, batch // window)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    block = batch * int(p["block_batches"])
    loss = 0.0
    for start in range(0, len(y), block):
        xb, yb = x[start:start + block], y[start:start + block]
        n, pad = len(yb), -len(yb) % batch
        valid = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
        xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
        subs = len(yb) // batch
        at = done + span * (start + batch * np.arange(subs)) / max(len(y), 1)
        alphas = np.maximum(float(p["min_alpha"]), float(p["alpha"]) - (
            float(p["alpha"]) - float(p["min_alpha"])) * at).astype(np.float32)
        loss += float(step(xb.reshape(subs, batch, *xb.shape[1:]), yb.reshape(subs, batch),
                           valid.reshape(subs, batch), alphas))
    return loss, len(y)


def _save_weights(path: str, w_in: np.ndarray, w_out: np.ndarray) -> None:
    np.savez(path, w_in=w_in, w_out=w_out)
