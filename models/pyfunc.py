"""lakeforge models as MLflow pyfuncs: loadable in any Python process, without Spark.

``mlflow.pyfunc.load_model("models:/flights_mlp/3")`` gives a model whose ``predict``
takes a pandas DataFrame and returns one. Its one artifact, ``lakeforge``, is the same
folder the model store keeps (``model.keras``, ``transform.json``, the embeddings, …),
and its predictions come from the family's predictor (``Family.predictor``), which runs
the family's own scorer code on the frame instead of on Spark's batches, so they equal
``lakeforge score``'s:

* ``mlp`` and ``cnn``: rows shaped like the data set's silver table (the stored
  feature transform makes the features, as in training) or a ``features`` column of
  vectors; returns ``prediction``, ``probability``, ``probabilities``, ``value`` (a
  regression) and ``prediction_label``, one row per input row.
* ``word2vec``: a ``word`` column; returns ``word``, ``vector``, ``neighbours`` and
  ``similarities``, one row per input row (NULLs for a word outside the vocabulary).
* ``deepar``: windows shaped like its ``gold_deepar_<dataset>`` rows (each series'
  history and its covariates); returns the mean and quantiles of each series' next
  periods (``series_id``, ``step``, ``period``, ``mean``, ``q10``, ``q50``, ``q90``).
* ``rcf``: a stream's points shaped like its silver rows (the columns its roles name),
  or shingles; returns each point's ``score``, ``is_anomaly``, ``threshold``,
  ``point_score``, ``alert`` and ``alert_threshold`` (NULLs before a stream's first
  whole shingle).

The pyfunc needs lakeforge importable where it loads (it is in the virtualenv); its
``requirements.txt`` pins the versions it was saved with.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from models.family import get_family

ARTIFACT = "lakeforge"          # the pyfunc's artifact: the model store's folder
REQUIREMENTS = ("mlflow", "tensorflow-cpu", "keras", "numpy", "pandas", "pyarrow", "pillow")


@functools.cache
def _model_class() -> type:
    """The pyfunc class, made on first use.

    MLflow is imported only when a model is saved or loaded, not by every command that
    imports a family. The class is ``models.pyfunc.LakeforgeModel`` to pickle (the
    module's ``__getattr__`` below), so a saved model names it instead of copying it.
    """
    import mlflow.pyfunc

    class LakeforgeModel(mlflow.pyfunc.PythonModel):
        """A lakeforge model of one family; its artifact is the model store's folder."""

        def __init__(self, family: str, options: dict | None = None) -> None:
            self.family, self.options = family, dict(options or {})

        def load_context(self, context) -> None:
            """Keep where MLflow put the model's folder."""
            self.folder = context.artifacts[ARTIFACT]

        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            """The family's predictions of a DataFrame (see the module's docstring)."""
            return get_family(self.family).predictor(self.folder, pd.DataFrame(model_input),
                                                     **self.options)

    LakeforgeModel.__module__, LakeforgeModel.__qualname__ = __name__, "LakeforgeModel"
    return LakeforgeModel


def __getattr__(name: str) -> type:
    if name == "LakeforgeModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save(path: Path, family: str, folder: Path, example: pd.DataFrame | None,
         options: dict | None = None) -> bool:
    """Save the model in ``folder`` as a pyfunc at ``path``; False for a family without one.

    Args:
        path: the pyfunc's folder (must not exist).
        family: the model's family.
        folder: the model store's folder of the model (staged).
        example: input rows for the signature and the logged example (None: neither).
        options: the family predictor's keyword arguments (word2vec's ``k``).
    """
    predictor = get_family(family).predictor
    if predictor is None:
        return False
    import mlflow.pyfunc
    import mlflow.tracing
    from mlflow.models import infer_signature

    # Saving checks the example by predicting it, which MLflow traces to the default
    # store (a mlflow.db in the working folder) unless tracing is off.
    mlflow.tracing.disable()
    signature = None
    if example is not None:   # a column with no value says nothing of its type
        example = _widened(example.loc[:, [c for c in example.columns
                                           if example[c].notna().any()]])
        output = predictor(str(folder), example, **(options or {}))
        with warnings.catch_warnings():   # MLflow's hint on integer columns, once per save
            warnings.simplefilter("ignore", UserWarning)
            signature = infer_signature(example, output)
    with tempfile.TemporaryDirectory() as scratch:   # kept as artifacts/lakeforge/
        named = Path(scratch) / ARTIFACT
        shutil.copytree(folder, named)
        mlflow.pyfunc.save_model(
            str(path), python_model=_model_class()(family, options),
            artifacts={ARTIFACT: str(named)}, signature=signature, input_example=example,
            pip_requirements=_requirements(), metadata={"lakeforge_family": family})
    return True


def _widened(example: pd.DataFrame) -> pd.DataFrame:
    """The example with 64-bit numbers, so the signature takes what pandas makes.

    Spark's INT and FLOAT come to pandas as int32 and float32, and MLflow refuses an
    int64 or float64 input (pandas' defaults) for a column whose signature is narrower.
    """
    out = example.copy()
    for column in out.columns:
        values = out[column]
        if pd.api.types.is_integer_dtype(values.dtype):
            out[column] = values.astype(np.int64)
        elif pd.api.types.is_float_dtype(values.dtype):
            out[column] = values.astype(np.float64)
        elif values.dtype == object:
            first = values.dropna().iloc[0]
            if isinstance(first, np.ndarray) and first.dtype.kind in "iuf":
                wide = np.int64 if first.dtype.kind in "iu" else np.float64
                out[column] = [None if v is None else np.asarray(v, dtype=wide)
                               for v in values]
    return out


def _requirements() -> list[str]:
    pinned = []
    for name in ("lakeforge", *REQUIREMENTS):
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pinned
