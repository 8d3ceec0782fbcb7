"""Airflow DAGs from the pipeline definitions: one DAG per pipeline, one task per step.

Imported by the DAG files in ``pipelines/dags/`` inside Airflow's own virtualenv,
which has neither Spark nor the project's packages. Tasks therefore ask the
project's interpreter for the spark-submit settings when they run
(``lakeforge submit --print-json JOB``): the same master, Delta jars, catalog,
executor interpreter and environment as ``lakeforge submit``, resolved from
``conf/`` and ``LAKEFORGE_*`` at run time, not at DAG-parse time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from pipelines.definitions import AIRFLOW_BATCH, Pipeline

CONN_ID = "lakeforge_spark"
LAKEFORGE_ERROR = 2   # exit code of a lakeforge error: bad input or config, not worth a retry


class LakeforgeSubmitOperator(SparkSubmitOperator):
    """spark-submit of one ``jobs/<job>.py`` with lakeforge's settings.

    The run's ``set`` parameter (a list of ``key=value`` config overrides, e.g.
    ``spark.master=spark://host:7077``) reaches both the settings and the job.
    The master is lakeforge's ``spark.master``: the job builds its session with it,
    so the operator's connection is made to agree (the ``lakeforge_spark``
    connection, set from it for the task unless defined in the environment).
    """

    def __init__(self, *, job: str, project: str, python: str, code_zip: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(conn_id=CONN_ID, name=f"lakeforge-{job}", **kwargs)
        self.job, self.project, self.python, self.code_zip = job, project, python, code_zip

    def execute(self, context: Any) -> None:
        """Resolve the settings with the project's interpreter, then spark-submit."""
        overrides = [str(o) for o in (context["params"].get("set") or [])]
        settings = self.resolve_settings(overrides)
        self.application = settings["application"]
        self.name = settings["name"]
        self.conf = {**settings["conf"], **(self.conf or {})}
        self.env_vars = {**settings["env"], **(self.env_vars or {})}
        self.application_args = [*(self.application_args or []),
                                 *(f"--set={o}" for o in overrides)]
        os.environ.setdefault(f"AIRFLOW_CONN_{CONN_ID.upper()}",
                              json.dumps({"conn_type": "spark", "host": settings["master"]}))
        try:
            super().execute(context)
        except AirflowException as exc:
            if self.submit_exit_code() == LAKEFORGE_ERROR:
                raise AirflowFailException(f"lakeforge {self.job} failed on its input or "
                                           f"config (see the log above): {exc}") from exc
            raise

    def submit_exit_code(self) -> int | None:
        """The exit code of the spark-submit this task ran, once it has ended.

        The Spark provider's hook raises a plain AirflowException that carries the code
        only in its message; the code itself is on the spark-submit process the hook
        keeps (``_submit_sp``, a ``subprocess.Popen``; provider 6.3.4, pinned by
        scripts/setup-airflow.sh). Its ``_spark_exit_code`` is another thing: the exit
        code a Kubernetes driver pod reports.

        Returns:
            The code, or None before spark-submit has ended.
        """
        process = getattr(self._hook, "_submit_sp", None)
        return None if process is None else process.returncode

    def resolve_settings(self, overrides: Sequence[str]) -> dict[str, Any]:
        """``lakeforge submit --print-json`` for this job, run by the project's interpreter.

        Raises:
            AirflowFailException: the config is invalid (the message names the value);
                a retry would fail the same way.
            AirflowException: the project's interpreter could not run.
        """
        cmd = [self.python, "-m", "jobs.cli", "submit", "--print-json",
               *(["--py-files", self.code_zip] if self.code_zip else []),
               *(f"--set={o}" for o in overrides), self.job]
        env = {**os.environ, **(self.env_vars or {})}
        proc = subprocess.run(cmd, cwd=self.project, env=env, capture_output=True, text=True,
                              check=False)
        if proc.returncode == 0:
            return json.loads(proc.stdout)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        message = lines[-1] if lines else f"exit code {proc.returncode}"
        self.log.error("%s", proc.stderr)
        if proc.returncode == LAKEFORGE_ERROR:
            raise AirflowFailException(message)
        raise AirflowException(f"{' '.join(cmd)} failed: {message}")


def build_dag(pipeline: Pipeline, project: str | Path, python: str | Path,
              spark_submit: str | Path, code_zip: str | None = None,
              start_date: dt.datetime | None = None) -> DAG:
    """The DAG of one pipeline: ingest >> curate >> features >> train >> score.

    Args:
        pipeline: the definition.
        project: the lakeforge checkout (``jobs/`` and ``conf/``).
        python: the project's interpreter (its virtualenv has Spark and the models).
        spark_submit: the spark-submit to run (pyspark's, in the project's virtualenv).
        code_zip: code for the executors (``dist/lakeforge.zip``, spark-submit's
            ``--py-files``); not needed where executors run the project's virtualenv.
        start_date: first data interval (default 2026-01-01 UTC).

    Returns:
        The DAG, with the run parameter ``set`` (config overrides for this run).
    """
    with DAG(
        dag_id=pipeline.name,
        description=pipeline.description or None,
        schedule=pipeline.schedule,
        start_date=start_date or dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=1,
        tags=["lakeforge", pipeline.family],
        params={"set": Param([], type="array",
                             description="config overrides key=value for this run")},
        default_args={"retries": pipeline.retries,
                      "retry_delay": dt.timedelta(minutes=pipeline.retry_delay_minutes)},
    ) as dag:
        previous = None
        for step in pipeline.steps(AIRFLOW_BATCH):
            task = LakeforgeSubmitOperator(
                task_id=step.name, job=step.job, project=str(project), python=str(python),
                code_zip=code_zip, spark_binary=str(spark_submit),
                application_args=list(step.args))
            if previous is not None:
                previous >> task
            previous = task
    return dag
