"""Domain errors: one module, so callers can catch exactly what they can handle."""

from __future__ import annotations


class LakeforgeError(Exception):
    """Base class of every error lakeforge raises on purpose."""


class ConfigError(LakeforgeError):
    """A config key is unknown or a config value has the wrong type or range."""


class SourceError(LakeforgeError):
    """A raw data source is unknown or its files cannot be found."""


class TableNotFoundError(LakeforgeError):
    """A table is not in the registry or not in the catalog."""


class SchemaMismatchError(LakeforgeError):
    """An existing table's schema differs from the one the registry declares."""


class CommitConflictError(LakeforgeError):
    """A Delta commit lost against a concurrent writer after all retries."""


class CatalogError(LakeforgeError):
    """A data catalog entry cannot be used (bad DDL, SQL, path or role); names them all."""


class LakehouseBusyError(LakeforgeError):
    """Another process holds a lakehouse whose embedded Derby metastore admits one."""


class QualityError(LakeforgeError):
    """A quality rule with ``on_fail: fail`` was broken; names the rule, batch and a row."""
