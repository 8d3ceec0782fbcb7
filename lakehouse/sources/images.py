"""Fashion-MNIST in IDX format (gzip): image files paired with their label files."""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator

import pandas as pd

from lakehouse.sources.base import FrameBuilder, ParseOptions, reject_file

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def labels_path(images_path: str) -> str:
    """The label file that belongs to an IDX image file."""
    return images_path.replace("images-idx3", "labels-idx1")


def _read_idx(path: str, magic: int) -> tuple[tuple[int, ...], bytes, str | None]:
    """Read an IDX file: (dims, payload, problem or None). Truncation is a problem."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        partial = b""
        try:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(1 << 16):
                    partial += chunk
        except (OSError, EOFError, zlib.error):
            pass
        data, problem = partial, f"{path}: compressed stream is damaged ({exc})"
    else:
        problem = None
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != magic:
        raise ValueError(f"{path}: not an IDX file with magic number {magic}")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :], problem


def parse_idx(path: str, options: ParseOptions) -> Iterator[pd.DataFrame]:
    """Parse an IDX image file and its label file (``*labels-idx1*``): a record per image.

    Complete images go to bronze; if a file is truncated or damaged, the images it
    declares but does not hold go to quarantine as one record naming the shortfall.
    """
    split = "train" if "train" in path.rsplit("/", 1)[-1] else "test"
    try:
        dims, pixels, problem = _read_idx(path, IMAGE_MAGIC)
        (n_labels,), labels, label_problem = _read_idx(labels_path(path), LABEL_MAGIC)
    except (OSError, ValueError) as exc:
        yield from reject_file(path, options, f"cannot read IDX split: {exc}")
        return
    n_images, size = dims[0], dims[1] * dims[2]
    complete = min(len(pixels) // size, len(labels), n_images, n_labels)
    builder = FrameBuilder(options)
    for i in range(complete):
        builder.ok(i, {"split": split, "image_id": i, "label": labels[i],
                       "pixels": pixels[i * size : (i + 1) * size]})
        if builder.full():
            yield builder.frame()
    if complete < max(n_images, n_labels):
        reason = (
            f"truncated: header declares {n_images} images and {n_labels} labels, "
            f"only {complete} complete"
        )
        detail = "; ".join(p for p in (problem, label_problem) if p)
        builder.reject(complete, f"{reason}{'; ' + detail if detail else ''}", path)
    yield builder.frame()
