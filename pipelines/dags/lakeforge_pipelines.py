"""Airflow DAGs of lakeforge: one per pipeline in pipelines/pipelines.yml.

Only wiring: the definitions say which steps run; pipelines/dag_factory.py turns them
into spark-submit tasks. Locations come from the environment, defaulting to this
checkout and its virtualenv (``LAKEFORGE_*`` names are lakeforge's config keys,
so these are ``AIRFLOW_LAKEFORGE_*``):

- ``AIRFLOW_LAKEFORGE_PROJECT``: the lakeforge checkout (jobs/, conf/);
- ``AIRFLOW_LAKEFORGE_PYTHON``: the project's interpreter (``<project>/.venv/bin/python``);
- ``AIRFLOW_LAKEFORGE_SPARK_SUBMIT``: spark-submit (pyspark's, in the project's virtualenv);
- ``AIRFLOW_LAKEFORGE_PY_FILES``: code for the executors (``dist/lakeforge.zip``), if any;
- ``AIRFLOW_LAKEFORGE_PIPELINES``: another definitions file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT = Path(os.environ.get("AIRFLOW_LAKEFORGE_PROJECT") or Path(__file__).resolve().parents[2])
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from pipelines.dag_factory import build_dag  # noqa: E402
from pipelines.definitions import load_pipelines  # noqa: E402

PYTHON = os.environ.get("AIRFLOW_LAKEFORGE_PYTHON") or str(PROJECT / ".venv" / "bin" / "python")
SPARK_SUBMIT = (os.environ.get("AIRFLOW_LAKEFORGE_SPARK_SUBMIT")
                or str(PROJECT / ".venv" / "bin" / "spark-submit"))

CODE_ZIP = os.environ.get("AIRFLOW_LAKEFORGE_PY_FILES") or None

for _pipeline in load_pipelines(os.environ.get("AIRFLOW_LAKEFORGE_PIPELINES")).values():
    globals()[_pipeline.name] = build_dag(_pipeline, PROJECT, PYTHON, SPARK_SUBMIT, CODE_ZIP)
