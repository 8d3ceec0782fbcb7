"""Training runs and the model registry in MLflow.

Every training run is an MLflow run in one experiment (``tracking.experiment``, by
default the catalog's database): its parameters, rank 0's metrics per epoch, the final
evaluation, the report's plots and the model's files, its training table and Delta
version as the run's input, and tags with the lakeforge run id and the code's
revision. A run started again with the same lakeforge run id (a resume after a kill)
continues the same MLflow run; a run whose process is gone shows as ``FAILED`` once
any training, ``models check`` or the UI looks again.

**Which registry decides.** The ``models`` Delta table gives version numbers: a version
is taken there by a Delta MERGE, which stays correct when trainings on several
nodes register at once, and works without MLflow. MLflow's Model Registry follows it:
lakeforge's version N of a model is MLflow's version N under the same name, tagged
with lakeforge's artifact folder, and the models table keeps the MLflow run id. MLflow
numbers versions itself (one above the highest it ever gave, deleted ones included),
so a version deleted in MLflow cannot be made again: :func:`check` reports it and
``lakeforge models check`` exits 2, and registration never gives a number that
disagrees (a version MLflow numbers otherwise is deleted again, with a warning).

The tracking store is a team's server or database (``tracking.uri``), else SQLite under
the home folder, or a database of its own on the PostgreSQL service when the metastore
is shared. MLflow's telemetry is off unless ``MLFLOW_DISABLE_TELEMETRY`` says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakehouse.config import PROJECT_ROOT, Config
from lakehouse.daemon import owner_gone, owner_line
from lakehouse.errors import ConfigError, LakeforgeError

log = logging.getLogger(__name__)

TAG_RUN = "lakeforge.run_id"
TAG_OWNER = "lakeforge.owner"
TAG_FAMILY = "lakeforge.family"
TAG_REVISION = "lakeforge.revision"
TAG_VERSION = "lakeforge.version"
TAG_ARTIFACT = "lakeforge.artifact"
TAG_TABLE_VERSION = "lakeforge.training_version"
MODEL_PATH = "model"          # the run's artifact folder holding the model's files
MAX_PARAM = 6000              # MLflow's longest parameter value
OPEN_ATTEMPTS = 4
_QUIET = ("alembic", "mlflow.store.db.utils", "mlflow.tracking", "mlflow.store", "mlflow.pyfunc",
          "mlflow.models")


class TrackingError(LakeforgeError):
    """The tracking store cannot be reached, or refuses what lakeforge asks of it."""


def tracking_uri(cfg: Config) -> str:
    """The tracking (and registry) store: configured, else the embedded default."""
    t = cfg.tracking
    if t.uri:
        return t.uri
    if cfg.metastore.kind == "postgres":
        ms = cfg.metastore
        return f"postgresql://{ms.user}:{ms.password}@{ms.host}:{ms.port}/{t.database}"
    return f"sqlite:///{(cfg.home / 'mlflow' / 'mlflow.db').resolve()}"


def artifact_root(cfg: Config) -> str:
    """Where a store created here keeps run artifacts (``mlflow`` under the lake).

    MLflow writes S3 through boto3, which names the scheme ``s3://``; the endpoint of
    an S3-compatible store comes from :func:`mlflow_env`.
    """
    return artifact_uri(cfg.tracking.artifact_root or cfg.lake_path("mlflow"))


def mlflow_env(cfg: Config) -> dict[str, str]:
    """Environment MLflow's client and server need for this lake (telemetry off too)."""
    env = {"MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}
    if cfg.lake.s3.endpoint:
        env["MLFLOW_S3_ENDPOINT_URL"] = cfg.lake.s3.endpoint
    return env


# What this process's trackers put in its environment (MLflow reads it there): a value
# set here for one lake is replaced for the next lake, one set by the user is kept.
_SET_HERE: dict[str, str] = {}


def _use_env(cfg: Config) -> None:
    wanted = mlflow_env(cfg)
    for key in set(_SET_HERE) | set(wanted):
        if key in os.environ and os.environ[key] != _SET_HERE.get(key):
            continue                                    # the user's own
        if key in wanted:
            os.environ[key] = _SET_HERE[key] = wanted[key]
        else:
            os.environ.pop(key, None)
            del _SET_HERE[key]


def revision() -> str:
    """The code's git revision (``+dirty`` with uncommitted changes), else its version."""
    try:
        head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True,
                                   timeout=10).stdout.strip()
            return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"lakeforge {version('lakeforge')}"
    except PackageNotFoundError:
        return "unknown"


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Parameters as MLflow keeps them: one string per leaf, nested keys joined by ``.``."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:MAX_PARAM]
    return flat


@dataclass(frozen=True)
class Disagreement:
    """One way the models table and MLflow's registry differ."""

    name: str
    version: int
    problem: str


class Tracker:
    """A connection to the tracking store, for one experiment.

    Raises:
        TrackingError: a tracking server that does not answer within
            ``tracking.timeout`` (named, with what to change), or a database that
            cannot be opened.
    """

    def __init__(self, cfg: Config) -> None:
        _use_env(cfg)
        # importing MLflow configures its loggers: quieten them after
        from mlflow import MlflowClient

        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
        self.cfg = cfg
        self.uri = tracking_uri(cfg)
        self.experiment_name = cfg.tracking.experiment or cfg.catalog.database
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        elif self.uri.startswith(("http://", "https://")):
            _check_server(self.uri, cfg.tracking.timeout)
        # A new store is created (its schema migrated) by the first client that opens it;
        # two jobs starting at once would both migrate it. On SQLite they take turns (a
        # lock file beside the database); a server's database is retried.
        with _store_lock(self.uri):
            for attempt in range(1, OPEN_ATTEMPTS + 1):
                try:
                    self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
                    self.experiment_id = self._experiment()
                    break
                except Exception as exc:  # noqa: BLE001 - SQLAlchemy, REST, MLflow errors
                    if attempt == OPEN_ATTEMPTS:
                        raise TrackingError(
                            f"tracking store {safe_uri(self.uri)} cannot be used: "
                            f"{_first_line(exc)} (tracking.uri; tracking.enabled=false "
                            f"trains without MLflow)") from exc
                    log.info("tracking store %s: %s; trying again", safe_uri(self.uri),
                             _first_line(exc))
                    time.sleep(2 * attempt)

    def _experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment_name,
                artifact_location=f"{artifact_root(self.cfg)}/{self.experiment_name}")
        except Exception:  # noqa: BLE001 - created meanwhile by another training
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is None:
                raise
            return found.experiment_id

    # -- runs --------------------------------------------------------------------------

    def find_run(self, run_id: str) -> Any | None:
        """The MLflow run of a lakeforge run id, if one was started."""
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`{TAG_RUN}` = '{run_id}'",
                                       max_results=1)
        return runs[0] if runs else None

    def mark_gone(self) -> list[str]:
        """Mark ``FAILED`` every running run whose process on this host has ended.

        Returns:
            The MLflow run ids marked.
        """
        marked = []
        for run in self.client.search_runs([self.experiment_id],
                                           filter_string="attributes.status = 'RUNNING'",
                                           max_results=1000):
            if owner_gone(run.data.tags.get(TAG_OWNER, "")):
                self.client.set_terminated(run.info.run_id, "FAILED")
                marked.append(run.info.run_id)
                log.info("MLflow run %s (%s) was killed; marked FAILED", run.info.run_id,
                         run.data.tags.get(TAG_RUN, "?"))
        return marked

    def start(self, run_id: str, name: str, family: str, table: str, version: int,
              params: Mapping[str, Any], table_location: str | None = None) -> str:
        """Start the MLflow run of a training run, or continue the one it started.

        A new run gets its parameters, tags and input data set (the training table at
        its Delta version); a continued one is set running again under this process.

        Returns:
            The MLflow run id.
        """
        self.mark_gone()
        owner = owner_line()
        found = self.find_run(run_id)
        if found is not None:
            mlrun = found.info.run_id
            self.client.update_run(mlrun, status="RUNNING")
            self.client.set_tag(mlrun, TAG_OWNER, owner)
            log.info("continuing MLflow run %s of %s (%s)", mlrun, run_id,
                     found.info.status.lower())
            return mlrun
        from mlflow.entities import Param, RunTag

        tags = {TAG_RUN: run_id, TAG_OWNER: owner, TAG_FAMILY: family,
                TAG_REVISION: revision(), "lakeforge.model": name,
                "lakeforge.training_table": table, TAG_TABLE_VERSION: str(version)}
        run = self.client.create_run(self.experiment_id, run_name=run_id, tags=tags)
        mlrun = run.info.run_id
        flat = sorted(flat_params(params).items())
        for i in range(0, len(flat), 100):   # MLflow takes at most 100 parameters a call
            self.client.log_batch(mlrun, params=[Param(k, v) for k, v in flat[i:i + 100]],
                                  tags=[RunTag("mlflow.source.name", "lakeforge train")])
        self._log_input(mlrun, table, version, table_location)
        log.info("MLflow run %s in experiment %s (%s)", mlrun, self.experiment_name,
                 safe_uri(self.uri))
        return mlrun

    def _log_input(self, mlrun: str, table: str, version: int, location: str | None) -> None:
        from mlflow.data.delta_dataset_source import DeltaDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        source = DeltaDatasetSource(path=location, delta_table_name=None if location else table,
                                    delta_table_version=version)
        dataset = MetaDataset(source, name=f"{table}@v{version}")
        self.client.log_inputs(mlrun, [DatasetInput(dataset._to_mlflow_entity(), tags=[
            InputTag("mlflow.data.context", "training")])])

    def log_training(self, mlrun: str, history: Mapping[str, list[float]], first_epoch: int,
                     metrics: Mapping[str, float]) -> None:
        """Log rank 0's metrics per epoch and the evaluation."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        series = [Metric(f"epoch_{key}", float(v), now, first_epoch + i)
                  for key, values in history.items() for i, v in enumerate(values)
                  if v == v]   # NaN is dropped, not logged
        final = [Metric(key, float(v), now, 0) for key, v in metrics.items() if v == v]
        points = series + final
        for i in range(0, len(points), 1000):   # MLflow takes at most 1,000 metrics a call
            self.client.log_batch(mlrun, metrics=points[i:i + 1000])

    def log_model(self, mlrun: str, folder: Path) -> None:
        """Log the model's folder (a pyfunc, or the store's files) as ``model/``."""
        self.client.log_artifacts(mlrun, str(folder), MODEL_PATH)

    def finish(self, mlrun: str, status: str = "FINISHED") -> None:
        """End an MLflow run (``FINISHED`` or ``FAILED``)."""
        self.client.set_terminated(mlrun, status)

    @contextlib.contextmanager
    def running(self, mlrun: str) -> Iterator[None]:
        """Inside: the run ends ``FAILED`` on any error, Ctrl-C or SIGTERM."""
        previous = None
        try:
            previous = signal.signal(signal.SIGTERM, _terminated)
        except ValueError:   # not the main thread: SIGTERM keeps its handler
            pass
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.finish(mlrun, "FAILED")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    # -- registry ----------------------------------------------------------------------

    def versions(self, name: str) -> dict[int, Any]:
        """MLflow's versions of a model by number (none when it is not registered)."""
        return {int(v.version): v
                for v in self.client.search_model_versions(f"name = '{name}'")}

    def register(self, record: Any, mlrun: str | None) -> int | None:
        """Make lakeforge's version of a model MLflow's version of the same number.

        Args:
            record: the lakeforge :class:`models.store.ModelRecord`.
            mlrun: its MLflow run (its ``model`` artifacts are the version's source);
                None: the lakeforge artifact folder is the source.

        Returns:
            The version, or None when MLflow would number it otherwise (logged).
        """
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(record.name, tags={TAG_FAMILY: record.family})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        existing = self.versions(record.name)
        if record.version in existing:
            return record.version
        source = (f"{self.client.get_run(mlrun).info.artifact_uri}/{MODEL_PATH}" if mlrun
                  else artifact_uri(record.artifact))
        made = self.client.create_model_version(
            record.name, source, run_id=mlrun, description=f"lakeforge {record.family} model "
            f"trained on {record.training_table} v{record.training_version}",
            tags={TAG_VERSION: str(record.version), TAG_ARTIFACT: record.artifact,
                  TAG_RUN: record.run_id})
        if int(made.version) != record.version:
            self.client.delete_model_version(record.name, made.version)
            log.warning("MLflow would number %s v%d as v%s (a version was deleted there); "
                        "not registered in MLflow: see `lakeforge models check`",
                        record.name, record.version, made.version)
            return None
        log.info("registered %s v%d in MLflow's registry", record.name, record.version)
        return record.version

    def version_of_alias(self, name: str, alias: str) -> int:
        """The version an MLflow alias (``champion``) points at.

        Raises:
            TrackingError: no such model or alias (the aliases that exist are named).
        """
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            try:
                aliases = sorted(self.client.get_registered_model(name).aliases)
            except MlflowException:
                raise TrackingError(f"model {name!r} is not in MLflow's registry "
                                    f"({safe_uri(self.uri)})") from None
            raise TrackingError(f"model {name!r} has no alias {alias!r}; aliases: "
                                f"{', '.join(aliases) or 'none'}") from None

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point an MLflow alias of a model at one of its versions."""
        self.client.set_registered_model_alias(name, alias, str(version))


def model_ref(cfg: Config, name: str, version: int | str) -> tuple[str, int | str]:
    """A model named as ``NAME@ALIAS`` (an MLflow alias) as its name and version number.

    Raises:
        ConfigError: an alias with a version too, or with tracking off.
        TrackingError: no such alias.
    """
    if "@" not in name:
        return name, version
    model, alias = name.split("@", 1)
    if version != "latest":
        raise ConfigError(f"model {name}: an alias names the version; leave out the version "
                          f"({version})")
    if not cfg.tracking.enabled:
        raise ConfigError(f"model {name}: aliases are MLflow's; tracking.enabled is false")
    return model, Tracker(cfg).version_of_alias(model, alias)


def check(tracker: Tracker, records: list[Any]) -> list[Disagreement]:
    """Every way the models table (``records``) and MLflow's registry disagree.

    A version in one and not the other, an MLflow version tagged with another
    lakeforge version, or one whose MLflow run is not the run the models table names.
    """
    found: list[Disagreement] = []
    by_name: dict[str, dict[int, Any]] = {}
    for record in records:
        by_name.setdefault(record.name, {})[record.version] = record
    names = set(by_name) | {m.name for m in tracker.client.search_registered_models(
        max_results=1000)}
    for name in sorted(names):
        ours, theirs = by_name.get(name, {}), tracker.versions(name)
        for version in sorted(set(ours) | set(theirs)):
            record, mv = ours.get(version), theirs.get(version)
            if mv is None:
                found.append(Disagreement(name, version, "missing in MLflow's registry"))
            elif record is None:
                found.append(Disagreement(name, version, "in MLflow's registry only"))
            elif mv.tags.get(TAG_VERSION) != str(version):
                found.append(Disagreement(name, version, f"MLflow's version is tagged "
                                          f"lakeforge v{mv.tags.get(TAG_VERSION, '?')}"))
            elif record.mlflow_run_id and mv.run_id != record.mlflow_run_id:
                found.append(Disagreement(name, version, f"MLflow's version is of run "
                                          f"{mv.run_id}, the models table's of "
                                          f"{record.mlflow_run_id}"))
    return found


def sync(tracker: Tracker, records: list[Any]) -> list[tuple[str, int]]:
    """Register in MLflow every lakeforge version it lacks, in order, per model.

    A model stops at its first version MLflow would number otherwise.

    Returns:
        ``(name, version)`` of each version registered.
    """
    done = []
    for record in sorted(records, key=lambda r: (r.name, r.version)):
        if any(n == record.name and v is None for n, v in done):
            continue
        if record.version in tracker.versions(record.name):
            continue
        made = tracker.register(record, record.mlflow_run_id)
        done.append((record.name, made))
    return [(n, v) for n, v in done if v is not None]


def artifact_uri(path: str) -> str:
    """A lakeforge artifact folder as MLflow reads it (``s3://`` for ``s3a://``)."""
    return "s3://" + path.removeprefix("s3a://") if path.startswith("s3a://") else path


def ui_command(cfg: Config, host: str, port: int) -> list[str]:
    """``mlflow server`` on the tracking store, with one worker.

    Raises:
        ConfigError: the store is a server (its UI is there).
    """
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        raise ConfigError(f"tracking.uri is the server {uri}: open its UI there")
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--default-artifact-root", artifact_root(cfg), "--host", host, "--port", str(port),
            "--workers", "1"]


def _check_server(uri: str, timeout: float) -> None:
    """Stop unless the tracking server answers its health check."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as reply:
            if reply.status == 200:
                return
            problem = f"HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise TrackingError(f"tracking server {safe_uri(uri)} does not answer ({problem}) after "
                        f"{timeout:g}s: start it, or set tracking.uri (tracking.enabled=false "
                        f"trains without MLflow)")


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Inside: this process alone opens a SQLite store (a no-op for other stores)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(uri.removeprefix("sqlite:///") + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def safe_uri(uri: str) -> str:
    """A store URI without its password."""
    if "://" in uri and "@" in uri.split("://", 1)[1]:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return uri


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
