# lakeforge — every target sets up what is missing first (scripts/setup.sh is
# idempotent and takes seconds when nothing changed).
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: setup airflow dist demo test test-fast lint metastore lake-server kafka sql-server mlflow-ui bench-ingest bench-lake bench-sql bench-commands bench-append bench-curate bench-score bench-pyfunc bench-train bench-mlp bench-mlp-regression bench-cnn bench-word2vec bench-deepar bench-rcf bench-alerts bench-stream bench-stream-live soak clean help

help:           ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup:          ## virtualenv, pinned packages, Horovod build, Delta jars, Debian data
	@bash scripts/setup.sh

airflow:        ## Airflow 3 in .venv-airflow, metadata DB under LAKEFORGE_HOME (pipelines/dags)
	@bash scripts/setup-airflow.sh

dist: setup     ## wheel + dist/lakeforge.zip (code for spark-submit --py-files)
	rm -rf dist
	$(PY) -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w dist .
	cp dist/lakeforge-*.whl dist/lakeforge.zip
	@ls dist

demo: setup     ## run the pipeline end to end on the real data (embedded defaults)
	$(VENV)/bin/lakeforge demo $(ARGS)

# Two test processes, each with its own SparkSession, a test file at a time, in the
# order tests/conftest.py gives (the longest files first): the suite
# waits on JVM starts, Horovod and Airflow's scheduler more than it computes.
# TEST_PROCS=0 runs it in one process.
TEST_PROCS ?= 2
PYTEST := $(PY) -m pytest $(if $(filter 0,$(TEST_PROCS)),,-n $(TEST_PROCS) --dist loadfile --no-loadscope-reorder)

test: setup     ## lint, then the whole test suite
	$(VENV)/bin/ruff check .
	$(PYTEST) $(ARGS)

test-fast: setup  ## the suite without the slow end-to-end tests
	$(PYTEST) -m "not slow" $(ARGS)

lint: setup     ## ruff
	$(VENV)/bin/ruff check .

bench-ingest: setup  ## Delta vs plain Parquet write of nycflights13 (rows/s)
	$(PY) bench/bench_ingest.py $(ARGS)

bench-curate: setup  ## daily curate of day 1, 10, 30 vs a Spark MERGE of the same rows
	$(PY) bench/bench_curate.py $(ARGS)

bench-append: setup  ## one small Delta append: catalog or path, with or without the exactly-once token
	$(PY) bench/bench_append.py $(ARGS)

metastore: setup    ## start the shared PostgreSQL metastore (LAKEFORGE_METASTORE__KIND=postgres)
	$(VENV)/bin/lakeforge metastore start $(ARGS)

lake-server: setup  ## a local S3 server (S3Proxy) for a lake on object storage; prints its settings
	$(VENV)/bin/lakeforge lake-server start $(ARGS)

kafka: setup        ## a local Kafka broker (KRaft) for streams on 127.0.0.1:9092
	$(VENV)/bin/lakeforge kafka start $(ARGS)

sql-server: setup   ## Spark Thrift server (JDBC) over the catalog, where sql_server: says (127.0.0.1:10000)
	$(VENV)/bin/lakeforge sql-server $(ARGS)

mlflow-ui: setup    ## MLflow's UI on the tracking store (runs, models) on 127.0.0.1:5000
	$(VENV)/bin/lakeforge mlflow ui $(ARGS)

bench-lake: setup   ## ingest, curate, features, train, score: lake local vs the local S3 server
	$(PY) bench/bench_lake.py $(ARGS)

bench-sql: setup    ## lakeforge sql and tables vs spark-sql -e cold, vs beeline on a running endpoint
	$(PY) bench/bench_sql.py $(ARGS)

bench-commands: setup  ## where a day's short commands spend their time (start, each Spark job, driver)
	$(PY) bench/bench_commands.py $(ARGS)

bench-score: setup  ## scorer vs per-row UDF vs one-process pandas (rows/s); needs make demo
	$(PY) bench/bench_score.py $(ARGS)

bench-pyfunc: setup ## lakeforge score vs MLflow's spark_udf of the same model (rows/s); needs make demo
	$(PY) bench/bench_pyfunc.py $(ARGS)

bench-train: setup  ## MLP vs MLlib and scikit-learn; CNN 2 ranks vs one process; memory
	$(PY) bench/bench_train.py $(ARGS)

bench-mlp: setup    ## the MLP part of bench-train
	$(PY) bench/bench_train.py --only mlp $(ARGS)

bench-mlp-regression: setup  ## MLP regression on diamonds vs scikit-learn MLPRegressor
	$(PY) bench/bench_train.py --only mlp-regression $(ARGS)

bench-cnn: setup    ## the CNN part of bench-train
	$(PY) bench/bench_train.py --only cnn $(ARGS)

bench-word2vec: setup  ## word2vec vs gensim and MLlib: words/s, WordSim/SimLex Spearman, analogies
	$(PY) bench/bench_word2vec.py $(ARGS)

bench-deepar: setup  ## DeepAR vs GluonTS's DeepAR, seasonal naive and ETS: ND, NRMSE, wQL
	@bash scripts/setup-gluonts.sh
	$(PY) bench/bench_deepar.py $(ARGS)

bench-rcf: setup    ## RCF vs rrcf and IsolationForest: ROC-AUC, PR-AUC, points/s
	$(PY) bench/bench_rcf.py $(ARGS)

bench-alerts: setup  ## RCF point scores and alerts per event, before and after, per stream
	$(PY) bench/bench_alerts.py $(ARGS)

bench-stream: setup  ## streaming RCF, updates off and on, vs AWS's TRCF 4.4.0: quality, points/s
	$(PY) bench/bench_stream.py $(ARGS)

bench-stream-live: setup  ## Kafka -> bronze -> RCF scores live: latency p50/p99, points/s, 1 and 100 streams
	$(PY) bench/bench_stream_live.py $(ARGS)

soak: setup         ## pipeline rounds with maintenance and random kills; prints what must be 0
	$(PY) bench/soak.py $(ARGS)

clean:          ## remove the local data directory (tables, metastore, models)
	rm -rf data spark-warehouse metastore_db derby.log
