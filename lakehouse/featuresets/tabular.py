"""The tabular kind: rows of columns, declared as numbers and categories with a label.

Its declaration, what is fitted and its gold table are those of
:class:`lakehouse.featuresets.declared.LabelledKind`; see :mod:`~.declared` for the
``features:`` keys (numeric and categorical columns, a classification or regression
label, the split).
"""

from __future__ import annotations

from lakehouse.featuresets.declared import LabelledKind


class TabularKind(LabelledKind):
    """Tabular data sets: numeric and categorical columns to one feature vector."""

    name = "tabular"


KIND = TabularKind()
