"""The application layer: the ``lakeforge`` command line and the spark-submit jobs.

The top of the house. ``jobs/cli.py`` is the ``lakeforge`` command, ``jobs/pipeline.py``
runs a pipeline definition in one process, ``jobs/demo.py`` and ``jobs/report.py`` make
the demo, and ``jobs/{ingest,curate,features,train,score,maintain,run}.py`` are the entry
points spark-submit runs. Layers import downwards only::

    jobs  ->  pipelines  ->  models  ->  lakehouse
"""
