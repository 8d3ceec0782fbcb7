"""The family contract: what every model family provides to the runner and the scorer.

A family is a folder ``models/<family>/`` with the same files for the same roles:

* ``__init__.py``: ``FAMILY``, its :class:`Family` (kind, parameters, trainer, scorer);
* ``params.py``: the typed training parameters (a frozen dataclass);
* ``train.py``: its :class:`FamilyTrainer`, the driver-side steps of one training run;
* ``rank.py``: what each Horovod rank runs;
* ``scoring.py``: batch scoring on executors;
* its network or model code.

A family trains on one kind of data set and reads its feature sets (gold tables)
through :mod:`lakehouse.featuresets`, which builds them; no family builds a table of
its own. The MLP and the CNN are Keras classifiers (or a regressor) over labelled
feature sets; they share ``models/classifier/`` (trainer, rank, scoring), and their
Keras-only settings (network, normalisation, tasks, shape check) live with that
trainer (:class:`models.classifier.train.KerasTrainer`). :func:`models.runner.train` is the one
training template: it checks the kind and the parameters, pins the table, asks the
trainer for its plan, derives the run id, returns an already registered run without
starting Horovod, stages, runs the ranks, evaluates and registers.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lakehouse.config import Config, load_typed
from lakehouse.errors import ConfigError
from lakehouse.lakefs import LakeFS

if TYPE_CHECKING:   # the contract's types only: pipelines and DAG files import this module
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

FAMILY_NAMES = ("mlp", "cnn", "word2vec", "deepar", "rcf")


@dataclass(frozen=True)
class TrainPlan:
    """What a family's trainer works out on the driver before any rank starts.

    Attributes:
        params: the run's parameters (the run id derives from them).
        summary: what is trained, for the log line (rows, shapes, ...).
        state: the trainer's own values, handed back to its later steps.
        recorded: the parameters the model records, when more than ``params`` (e.g. the
            feature parameters its table was built with).
    """

    params: dict[str, Any]
    summary: str
    state: dict[str, Any] = field(default_factory=dict)
    recorded: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunPaths:
    """Where a training run keeps its files.

    Attributes:
        run_id: the training run.
        staged: driver-local folder where the artifact is assembled before it is
            registered (the trainer's own files, rank 0's files, the plots).
        outputs: lake folder rank 0 writes its artifact files to (any node reaches it).
        checkpoints: lake folder of the run's checkpoints (a rerun resumes from them).
        lake: the lake's filesystem, for the ranks.
    """

    run_id: str
    staged: Path
    outputs: str
    checkpoints: str
    lake: LakeFS


class FamilyTrainer(ABC):
    """The driver-side steps a family adds to the training template.

    ``rank_fn`` runs inside every Horovod rank: a module-level function of the
    family's ``rank.py`` (it is pickled to the executors), given what
    :meth:`rank_spec` returns.
    """

    rank_fn: ClassVar[Callable[[Any], dict[str, Any]]]

    @abstractmethod
    def table(self, cfg: Config, dataset: str) -> str:
        """The gold table a run on ``dataset`` trains on (catalog name)."""

    @abstractmethod
    def plan(self, spark: SparkSession, cfg: Config, dataset: str, df: DataFrame, table: str,
             version: int, params: dict[str, Any]) -> TrainPlan:
        """Check the pinned table against the parameters; stop with a named error."""

    def ready(self, plan: TrainPlan, table: str, version: int) -> None:  # noqa: B027
        """Checks that only a run still to be trained needs (default: none)."""

    @abstractmethod
    def rank_spec(self, cfg: Config, plan: TrainPlan, run: RunPaths) -> Any:
        """The plain, picklable values every rank gets (files in ``run.staged`` stay local)."""

    @abstractmethod
    def evaluate(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                 ranks: list[dict[str, Any]], staged: Path, name: str) -> dict[str, float]:
        """The model's metrics from the ranks' reports; plots and files into ``staged``."""

    def example(self, spark: SparkSession, cfg: Config, plan: TrainPlan,
                staged: Path) -> pd.DataFrame | None:
        """A few rows of what the model's pyfunc takes (its MLflow input example)."""
        return None

    def pyfunc_options(self, plan: TrainPlan) -> dict[str, Any]:
        """Keyword arguments of the family's pyfunc predictor (default: none)."""
        return {}


@dataclass(frozen=True)
class Family:
    """A model family.

    Attributes:
        name: family name (the folder under ``models/``).
        kind: the kind of data set it trains on (``tabular``, ``image``, ``text``,
            ``series`` or ``stream``, as catalog entries declare ``kind:``); its
            feature sets come from :mod:`lakehouse.featuresets`.
        params: the family's typed training parameters, a frozen dataclass whose
            defaults are the family's defaults and whose ``__post_init__`` checks ranges.
        trainer: its :class:`FamilyTrainer`.
        scorer: ``scorer(spark, cfg, record, df, loads)`` -> DataFrame with the
            columns ``prediction_fields`` (``df``: the pinned input; ``loads``: an
            accumulator to add 1 to per model load on an executor); the shared
            scorer (:func:`models.scoring.score`) adds lineage and writes exactly once.
        prediction_fields: StructFields of ``predictions_<name>`` before lineage.
        prediction_late_fields: StructFields added after the first release, so after
            the lineage (existing tables gain them at the end).
        prediction_keys: columns that identify a prediction within one run.
        predictor: ``predictor(folder, rows, **options)`` -> DataFrame: the model in a
            local artifact folder applied to a pandas DataFrame, without Spark (what
            its MLflow pyfunc runs, :mod:`models.pyfunc`); None: no pyfunc yet.
    """

    name: str
    kind: str
    params: type
    trainer: FamilyTrainer
    scorer: Callable[..., Any]
    prediction_fields: tuple[Any, ...] = ()
    prediction_late_fields: tuple[Any, ...] = ()
    prediction_keys: tuple[str, ...] = ("row_id",)
    predictor: Callable[..., Any] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """The default training parameters, as plain values."""
        return dataclasses.asdict(self.params())

    def check_params(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The defaults overridden by ``given``, typed and checked on the driver.

        Raises:
            ConfigError: an unknown parameter, a value of the wrong type or out of range,
                naming the family, the parameter and the value.
        """
        return dataclasses.asdict(load_typed(self.params, dict(given or {}),
                                             f"{self.name} parameter"))


def check_kind(family: Family, cfg: Config, dataset: str) -> None:
    """Stop when ``dataset`` is a catalog entry of a kind ``family`` does not train on.

    Raises:
        ConfigError: naming the family, its kind, the data set and the data set's kind.
    """
    entry = cfg.datasets.get(dataset)
    if entry is not None and entry.kind and entry.kind != family.kind:
        raise ConfigError(f"{family.name} trains on {family.kind} data sets; {dataset!r} is a "
                          f"{entry.kind} data set (families for it: "
                          f"{', '.join(families_of_kind(entry.kind)) or 'none'})")


def families_of_kind(kind: str) -> list[str]:
    """The families that train on data sets of ``kind``."""
    return [n for n in FAMILY_NAMES if get_family(n).kind == kind]


def get_family(name: str) -> Family:
    """The family called ``name`` (``models/<name>/``), or ConfigError listing them."""
    if name not in FAMILY_NAMES:
        raise ConfigError(f"unknown model family {name!r}; families: {', '.join(FAMILY_NAMES)}")
    return importlib.import_module(f"models.{name}").FAMILY
