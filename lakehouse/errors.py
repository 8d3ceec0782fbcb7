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


class LakeUnreachableError(LakeforgeError):
    """The lake's filesystem (an object store, HDFS) refuses or does not answer."""


class DriverGoneError(LakeforgeError):
    """The Spark driver's JVM went away under a running job (a group signal, a crash)."""


class QualityError(LakeforgeError):
    """A quality rule with ``on_fail: fail`` was broken; names the rule, batch and a row."""


def error_condition(exc: BaseException) -> str | None:
    """The error condition of a Spark or Delta error, e.g. ``CAST_INVALID_INPUT``.

    PySpark's exceptions (``AnalysisException``, ``NumberFormatException``, Delta's
    Python conflict classes) answer ``getCondition()``. An error PySpark leaves
    unconverted is a ``Py4JJavaError`` (Delta's ``DeltaTableBuilder.execute`` raises
    those): its Java exception answers when it is a ``SparkThrowable``, as Spark's and
    Delta's are. A Java exception without a condition of its own gives the condition of
    the first error it wraps that has one.

    Args:
        exc: any exception.

    Returns:
        The condition, or None for errors that have none (not from Spark or Delta).
    """
    get = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    if callable(get) and (condition := get()):
        return condition
    for java in _java_chain(exc):
        condition = _java_condition(java)
        if condition:
            return condition
    return None


def java_classes(exc: BaseException) -> tuple[str, ...]:
    """Class names of the Java exception behind ``exc`` and of the errors it wraps.

    Args:
        exc: any exception; a Py4JJavaError or a PySpark exception converted from one.

    Returns:
        Outermost first; empty when no Java exception is behind ``exc``.
    """
    return tuple(java.getClass().getName() for java in _java_chain(exc))


def _java_chain(exc: BaseException) -> list:
    # Py4JJavaError.java_exception; PySpark keeps the Java exception it converted in
    # _origin (what its own getCondition reads).
    java = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    chain = []
    while java is not None and len(chain) < 20:
        chain.append(java)
        java = java.getCause()
    return chain


def _java_condition(java) -> str | None:
    from py4j.protocol import Py4JError

    try:
        return java.getCondition()
    except Py4JError:   # not a SparkThrowable: no such method
        return None


class RegistryMismatchError(LakeforgeError):
    """The models table and MLflow's Model Registry disagree (``lakeforge models check``)."""
