"""The image kind: a column of images, each decoded to height x width x channels numbers.

Its declaration (``features.image``: column, encoding, height, width, channels), what
is fitted (the string classes) and its gold table are those of
:class:`lakehouse.featuresets.declared.LabelledKind`; an image that cannot be decoded to
the declared shape is left out of the gold table.
"""

from __future__ import annotations

from lakehouse.featuresets.declared import LabelledKind


class ImageKind(LabelledKind):
    """Image data sets: pixels in [0, 1], channels last, a class label."""

    name = "image"


KIND = ImageKind()
