"""The ``lakeforge`` command line; the ``jobs/*.py`` spark-submit entry points call it too."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from lakehouse import __version__
from lakehouse.config import Config, load_config
from lakehouse.errors import ConfigError, LakeforgeError
from pipelines.definitions import STEP_NAMES

log = logging.getLogger("lakeforge")


def _today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set spark.master=local[2] (repeatable)")
    p.add_argument("--conf-dir", default=None, help="config folder with base/ and local/")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and Spark's own log (with Java stack traces) on the "
                        "terminal too; it always goes to a file under HOME/logs")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="lakeforge",
        description="Lakehouse ML pipeline: ingest and curate data into Delta Lake, "
                    "train on it with Horovod, score back into Delta, query with SQL.",
    )
    parser.add_argument("--version", action="version", version=f"lakeforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    source_help = "data set names from the catalog, or 'all' (`lakeforge catalog` lists them)"

    p = sub.add_parser("demo", help="run the pipeline end to end on the real data")
    p.add_argument("--batch", default="demo", help="batch id (default: demo)")
    p.add_argument("--no-train", dest="train", action="store_false",
                   help="only ingest and curate")
    _add_common(p)

    p = sub.add_parser("ingest", help="read a data set's new files into its bronze Delta table",
                       description="Read the files of each data set that no batch has ingested "
                                   "yet into bronze_TABLE; malformed records go to "
                                   "ops_quarantine with the reason. Re-running a batch changes "
                                   "nothing; a batch killed midway is finished by the next run.")
    p.add_argument("sources", nargs="+", metavar="DATASET", help=source_help)
    p.add_argument("--batch", default=_today(), help="batch id (default: today, UTC)")
    _add_common(p)

    p = sub.add_parser("curate", help="apply quality rules and merge bronze into silver tables",
                       description="Check the ingest batches that silver_TABLE does not hold "
                                   "yet against the data set's rules and merge them into it; "
                                   "rows that break a quarantine rule go to ops_quarantine. "
                                   "After a change of the data set's silver declaration "
                                   "(select, keys, rules), silver is rebuilt from all of "
                                   "bronze so that it holds what the declaration describes.")
    p.add_argument("sources", nargs="+", metavar="DATASET", help=source_help)
    p.add_argument("--batch", default=None,
                   help="only this ingest batch (default: every batch not curated yet)")
    p.add_argument("--rebuild", action="store_true",
                   help="rebuild silver from all of bronze even if nothing changed")
    _add_common(p)

    p = sub.add_parser("features", help="build gold feature tables from silver")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="feature sets: every tabular data set that declares features: in "
                        "the catalog (breast_cancer, wine, flights, diamonds, your own; MLP), "
                        "fashion_mnist (CNN); corpus (word2vec); us_employment, visnights "
                        "(DeepAR); mitdb, kdd_tsad_135 (RCF)")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="feature parameter, e.g. --param shingle_size=8 (repeatable)")
    _add_common(p)

    p = sub.add_parser("train", help="train a model family with Horovod on a gold table")
    p.add_argument("family", help="model family: mlp, cnn, word2vec, deepar, rcf")
    p.add_argument("--dataset", required=True, help="gold feature table, e.g. breast_cancer")
    p.add_argument("--version", type=int, default=None,
                   help="Delta version of the table (default: the current rows, recorded as "
                        "the table's data version)")
    p.add_argument("--run-id", default=None,
                   help="run id; starting the same run again resumes from its checkpoint")
    p.add_argument("--name", default=None, help="model name (default DATASET_FAMILY)")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training parameter, e.g. --param epochs=3 (repeatable)")
    _add_common(p)

    p = sub.add_parser("score", help="score a table with a stored model into predictions_FAMILY")
    p.add_argument("family", help="model family: mlp, cnn, word2vec, deepar, rcf")
    p.add_argument("--model", required=True,
                   help="model name, e.g. flights_mlp, or NAME@ALIAS for the version an "
                        "MLflow alias points at (flights_mlp@champion)")
    p.add_argument("--model-version", default="latest", help="version number or latest")
    p.add_argument("--input", default=None,
                   help="input table (default: the model's training table)")
    p.add_argument("--input-version", type=int, default=None,
                   help="Delta version of the input (default: the current rows, keyed on "
                        "the input's data version)")
    p.add_argument("--run-id", default=None,
                   help="idempotency key (default: model version + input version)")
    _add_common(p)

    p = sub.add_parser("run", help="run a pipeline from pipelines/pipelines.yml in-process: "
                                   "ingest, curate, features, train, score")
    p.add_argument("pipeline", help="pipeline name, e.g. breast_cancer_mlp")
    p.add_argument("--batch", default=_today(), help="ingest batch id (default: today, UTC)")
    p.add_argument("--definitions", default=None,
                   help="pipeline definitions file (default: pipelines/pipelines.yml)")
    p.add_argument("--from", dest="start_at", choices=STEP_NAMES, default=STEP_NAMES[0],
                   help="first step to run; the steps before it are skipped (default: ingest)")
    _add_common(p)

    p = sub.add_parser(
        "sql-server", help="serve the catalog over JDBC (Spark Thrift server), or manage its "
                           "users: sql-server [start] | sql-server user NAME [--remove]",
        description="start (the default): run Spark's Thrift server on the lake until "
                    "Ctrl-C; `lakeforge sql` and `tables` answer through it. user NAME: add "
                    "a login or change its password (read from the terminal, or one line "
                    "of stdin with --password-stdin) for sql_server.auth=password.")
    p.add_argument("action", nargs="?", choices=("start", "user"), default="start")
    p.add_argument("user", nargs="?", metavar="NAME", help="user name (for `user`)")
    p.add_argument("--port", type=int, default=None, help="port (default: sql_server.port)")
    p.add_argument("--host", default=None,
                   help="bind address (default: sql_server.host, 127.0.0.1); any other "
                        "than loopback needs sql_server.auth=password")
    p.add_argument("--remove", action="store_true", help="remove the user")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from one line of stdin")
    _add_common(p)

    p = sub.add_parser("maintain", help="OPTIMIZE and VACUUM every table of the lakehouse")
    p.add_argument("tables", nargs="*", metavar="TABLE",
                   help="table names, e.g. silver_flights (default: all)")
    _add_common(p)

    p = sub.add_parser(
        "metastore", help="the shared PostgreSQL metastore: start, stop, status, init, register",
        description="With metastore.kind=postgres (LAKEFORGE_METASTORE__KIND=postgres) many jobs "
                    "share one lakehouse. `start` runs a local PostgreSQL on metastore.host:port "
                    "with its data under home/postgres and creates the metastore schema; `init` "
                    "only creates the schema (a PostgreSQL you run yourself); `register` adds "
                    "every Delta table under the warehouse to the configured metastore (moving "
                    "a lakehouse from Derby); `status` and `stop` do what they say.")
    p.add_argument("action", choices=["start", "stop", "status", "init", "register"])
    _add_common(p)

    p = sub.add_parser(
        "lake-server", help="a local S3-compatible server (S3Proxy) for the lake: start, stop, "
                            "status, env",
        description="Runs S3Proxy on lake.server.host:port with its objects under home/s3, to "
                    "put the lake on object storage on this machine. `start` runs it and "
                    "creates the bucket; `env` prints the environment that puts a job's lake "
                    "on it (lake root, endpoint, credentials); `status` and `stop` do what "
                    "they say.")
    p.add_argument("action", choices=["start", "stop", "status", "env"])
    p.add_argument("--prefix", default="lake",
                   help="the lake's folder inside the bucket (default: lake)")
    _add_common(p)

    p = sub.add_parser(
        "stream", help="Structured Streaming: a Kafka topic or landing folder into bronze and "
                       "silver; RCF scores as points arrive",
        description="`stream ingest DATASET` runs a Structured Streaming query on the data set's "
                    "Kafka topic (source.kafka) or landing folder (source.files): every "
                    "micro-batch is parsed, its malformed records quarantined with the reason, "
                    "appended to bronze and curated into silver, exactly once across restarts "
                    "(the checkpoint is on the lake). It runs until Ctrl-C or SIGTERM, or with "
                    "--available-now reads what is there and stops (for schedulers).")
    streams = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = streams.add_parser("ingest", help="a data set's Kafka topic or landing folder into "
                                          "bronze and silver", description=p.description)
    q.add_argument("dataset", metavar="DATASET",
                   help="a data set whose source is a Kafka topic or files")
    q.add_argument("--available-now", action="store_true",
                   help="read what the topic or folder holds now, then stop")
    q.add_argument("--score", action="append", default=[], metavar="MODEL",
                   help="also score the data set's new points with this RCF model, in the "
                        "same process (repeatable): with the embedded Derby metastore only "
                        "one lakeforge process can run, so this is how a stream is ingested "
                        "and scored live on the defaults")
    _add_common(q)
    q = streams.add_parser(
        "replay", help="send a data set's rows to a Kafka topic in event-time order",
        description="Sends the silver rows of a data set (a stored stream, say) to a Kafka "
                    "topic on stream.kafka_bootstrap, one JSON record each, in event-time "
                    "order (the order role, else the keys), keyed by stream_id: a live "
                    "source for a Kafka data set to read.")
    q.add_argument("dataset", metavar="DATASET", help="the data set to replay")
    q.add_argument("--topic", required=True, help="the topic to send to")
    q.add_argument("--rate", type=float, default=0.0,
                   help="records a second (default: as fast as the broker takes them)")
    q.add_argument("--limit", type=int, help="send only the first N records")
    _add_common(q)
    q = streams.add_parser(
        "score", help="score each new point of a stream data set (RCF) as it arrives",
        description="Scores every new point of the stream data set an RCF model was trained "
                    "on, as it reaches bronze, into predictions_rcf_stream (state per "
                    "stream_id in Spark's state store; exactly once across restarts). A "
                    "point's score equals its batch score (`lakeforge score rcf`).")
    q.add_argument("family", choices=["rcf"])
    q.add_argument("--model", required=True, help="stored model name")
    q.add_argument("--model-version", default="latest", help="version number or latest")
    q.add_argument("--dataset", help="the stream data set to score (default: the one the "
                                     "model was trained on)")
    q.add_argument("--available-now", action="store_true",
                   help="score what bronze holds now, then stop")
    _add_common(q)

    p = sub.add_parser(
        "kafka", help="a local Kafka broker for streams: start, stop, status, send",
        description="Runs a single-node Kafka broker (KRaft) on stream.kafka_server.host:port "
                    "with its data under home/kafka, and sends files of records to a topic.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("start", "start the broker (unless it runs)"),
                         ("stop", "stop it"), ("status", "say whether it runs (exit 1: not)")):
        _add_common(actions.add_parser(action, help=text, description=text))
    q = actions.add_parser(
        "send", help="send each line of files (JSON or CSV records) to a topic",
        description="Sends each non-empty line of the files to TOPIC on stream.kafka_bootstrap "
                    "(the local broker unless set), one record a line.")
    q.add_argument("topic", metavar="TOPIC")
    q.add_argument("files", nargs="+", metavar="FILE", help="files of records, one a line")
    q.add_argument("--key", metavar="FIELD",
                   help="the JSON field that gives each record's message key (records of one "
                        "key land in one partition, in order)")
    _add_common(q)

    p = sub.add_parser(
        "models", help="the model registry: list, check, sync, alias",
        description="Every model version is a row of the models table and a version of the "
                    "same number in MLflow's Model Registry (tracking.uri). `models` lists "
                    "them; `models check` reports where the two disagree (exit code 2); "
                    "`models sync` registers in MLflow what it lacks; `models alias "
                    "NAME@ALIAS VERSION` points an MLflow alias at a version.")
    p.add_argument("action", nargs="?", default="list", choices=("list", "check", "sync", "alias"))
    p.add_argument("names", nargs="*", metavar="ARG",
                   help="list, check, sync: model names (default: all); alias: NAME@ALIAS VERSION")
    _add_common(p)

    p = sub.add_parser(
        "mlflow", help="MLflow's UI on the tracking store: `lakeforge mlflow ui`",
        description="Serves MLflow's UI (mlflow server) on the tracking store and the run "
                    "artifacts on the lake, at tracking.ui_host:ui_port, until Ctrl-C.")
    p.add_argument("action", choices=("ui",))
    p.add_argument("--host", default=None, help="interface (default tracking.ui_host)")
    p.add_argument("--port", type=int, default=None, help="port (default tracking.ui_port)")
    _add_common(p)

    p = sub.add_parser("tables", help="list tables with row counts and Delta versions")
    _add_common(p)

    p = sub.add_parser(
        "catalog", help="list the data catalog; `catalog check` validates every entry",
        description="Data sets are declared in YAML (conf/base/datasets.yml, conf/local/*.yml, "
                    "catalog.dataset_dirs). `lakeforge catalog` lists them; `lakeforge catalog "
                    "check [NAME ...]` checks DDL, SQL, paths and roles (exit code 2 on any "
                    "problem); `lakeforge catalog parsers` lists the parser plug-ins.")
    p.add_argument("names", nargs="*", metavar="[list|check|parsers] DATASET",
                   help="an action (list is the default) and data sets (default: all)")
    _add_common(p)

    p = sub.add_parser(
        "submit", help="run a job from jobs/ through spark-submit",
        description="Run jobs/JOB.py with spark-submit, with Delta's jars, the catalog and the "
                    "project interpreter on the command line. Options of `submit` go before JOB; "
                    "everything after JOB is the job's own arguments.",
        usage="lakeforge submit [--print] [--set KEY=VALUE] JOB [JOB ARGS ...]")
    p.add_argument("job", help="job name: ingest, curate, maintain, ...")
    p.add_argument("job_args", nargs=argparse.REMAINDER, metavar="...",
                   help="the job's own arguments (see `lakeforge JOB --help`)")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the spark-submit command instead of running it")
    p.add_argument("--print-json", dest="print_json", action="store_true",
                   help="print the command's parts as JSON (for schedulers) instead of running it")
    p.add_argument("--master", default=None,
                   help="Spark master, e.g. spark://host:7077 (same as --set spark.master=URL)")
    p.add_argument("--py-files", dest="py_files", default=None, metavar="ZIP",
                   help="code for the executors, e.g. dist/lakeforge.zip (see `make dist`)")
    _add_common(p)

    p = sub.add_parser("sql", help="run a SQL statement against the lakehouse")
    p.add_argument("query", help="SQL text; the lakeforge database is current")
    p.add_argument("--limit", type=int, default=50,
                   help="rows shown in a table (default 50; csv and json write every row)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (default), csv with a header line, or json (one object per "
                        "line): the last two for files and other programs")
    _add_common(p)
    return parser


def setup_logging(verbose: bool) -> None:
    """Timestamped logs on stderr: lakeforge's at INFO (DEBUG with -v), others' warnings."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for ours in ("lakeforge", "lakehouse", "models", "pipelines", "jobs"):
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.INFO)


def _cmd_ingest(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.render import format_table
    from lakehouse.stream import ingest_sources

    batches, streams = ingest_sources(spark, cfg, args.sources, args.batch)
    if batches:
        print(format_table(
            ["data set", "batch", "files", "read", "bronze", "quarantined", "note"],
            [(r.source, r.batch, r.files, r.read, r.bronze, r.quarantined, _ingest_note(r))
             for r in batches]))
    for result in streams:
        _print_stream(result)


def _ingest_note(result) -> str:
    notes = []
    if result.skipped:
        notes.append("batch already ingested" if result.files else "no new files")
    if result.resumed:
        notes.append(f"finished interrupted batch {', '.join(result.resumed)}")
    if result.changed:
        notes.append(f"{len(result.changed)} changed file(s) not ingested again (see log)")
    return "; ".join(notes)


def _cmd_stream(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.stream import ingest_query, replay, run_queries
    from models.rcf.stream import score_query

    if args.action == "ingest":
        ingesting, result = ingest_query(spark, cfg, args.dataset)
        scoring = [score_query(spark, cfg, model, dataset=args.dataset) for model in args.score]
        run_queries([ingesting, *scoring], cfg, args.available_now)
        _print_stream(result)
        return
    if args.action == "replay":
        sent = replay(spark, cfg, args.dataset, args.topic, args.rate, args.limit)
        print(f"sent {sent:,} record(s) of {args.dataset} to {args.topic} on "
              f"{cfg.stream.bootstrap}")
        return
    from models.rcf.stream import stream_score_rcf

    table = stream_score_rcf(spark, cfg, args.model, _model_version(args.model_version),
                             available_now=args.available_now, dataset=args.dataset)
    print(f"scored into {table}")


def _model_version(text: str) -> int | str:
    """``--model-version``: ``latest`` or a version number."""
    if text == "latest":
        return text
    if not text.isdigit():
        raise ConfigError(f"--model-version {text!r} is not a version number or latest")
    return int(text)


def _print_stream(r) -> None:
    from lakehouse.render import format_table

    print(format_table(
        ["data set", "micro-batches", "read", "bronze", "quarantined", "silver new",
         "silver updated", "quarantined by rules"],
        [(r.dataset, len(r.batches), r.read, r.bronze, r.quarantined, r.silver_new,
          r.silver_updated, r.rule_quarantined)]))


def _cmd_kafka(cfg: Config, args: argparse.Namespace) -> int:
    from lakehouse import kafka

    if args.action == "start":
        print(f"Kafka broker running on {kafka.start(cfg)} (data in "
              f"{kafka.state_dir(cfg) / 'data'})")
    elif args.action == "stop":
        print("stopped" if kafka.stop(cfg) else "not running")
    elif args.action == "status":
        up = kafka.running(cfg)
        print(f"local Kafka broker {'running' if up else 'not running'} on {kafka.bootstrap(cfg)}")
        return 0 if up else 1
    else:
        sent = kafka.send(cfg.stream.bootstrap, args.topic, [Path(f) for f in args.files],
                          args.key)
        print(f"sent {sent:,} record(s) to {args.topic} on {cfg.stream.bootstrap}")
    return 0


def _cmd_curate(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.curate import curate
    from lakehouse.render import format_table

    results = curate(spark, cfg, args.sources, args.batch, rebuild=args.rebuild)
    print(format_table(
        ["data set", "silver table", "batches", "valid", "quarantined", "inserted",
         "updated", "removed", "rows", "note"],
        [(r.source, r.table, len(r.batches), _blank(r.valid), _blank(r.rejected), r.inserted,
          r.updated, r.deleted, _blank(r.rows),
          "already curated" if r.skipped else (f"rebuilt: {r.rebuilt}" if r.rebuilt else ""))
         for r in results]))


def _blank(value: int | None) -> int | str:
    return "" if value is None else value


def _cmd_features(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.featuresets import build_features

    for name in args.names:
        build_features(spark, cfg, name, params=_parse_params(args.params))


def _parse_params(items: Sequence[str]) -> dict:
    import yaml


    params = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        params[key.strip()] = yaml.safe_load(value)
    return params


def _cmd_train(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.render import format_table
    from models.runner import train

    result = train(spark, cfg, args.family, args.dataset, args.version, args.run_id,
                   _parse_params(args.params), args.name)
    m = result.model
    print(format_table(["model", "version", "table", "table version", "metric", "value"],
                       [(m.name, m.version, m.training_table, m.training_version, k, v)
                        for k, v in sorted(m.metrics.items())]))
    print(f"artifact: {m.artifact}")


def _cmd_score(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.catalog import create_views
    from models.scoring import score

    version = _model_version(args.model_version)
    result = score(spark, cfg, args.family, args.model, version, args.input,
                   args.input_version, args.run_id)
    create_views(spark, cfg)
    state = "already scored; nothing written" if result.skipped else f"{result.rows:,} rows"
    print(f"{result.table}: run {result.run_id}: {state}")


def _cmd_sql_server(cfg: Config, args: argparse.Namespace) -> int:
    import signal
    import subprocess

    from lakehouse import endpoint
    from lakehouse.session import hold_lakehouse
    from lakehouse.submit import submit_env, thrift_command

    if args.action == "user":
        return _sql_user(cfg, args)
    host = args.host or cfg.sql_server.host
    port = args.port or cfg.sql_server.port
    endpoint.check_serving(cfg, host)
    command = thrift_command(cfg, port, host)
    hold_lakehouse(cfg)   # the server's JVM opens the metastore: one holder at a time
    login = (f" -n USER -p PASSWORD (users in {cfg.sql_users_file})"
             if cfg.sql_server.auth == "password" else "")
    log.info("Thrift server on jdbc:hive2://%s:%d/ (stop with Ctrl-C); try: %s; "
             "`lakeforge sql` and `lakeforge tables` answer through it", host, port,
             f"beeline -u jdbc:hive2://{host}:{port}/{login}")
    server = subprocess.Popen(command, env=submit_env(cfg))
    endpoint.announce(cfg, host, port, server.pid)

    def stop(signum: int, frame: object) -> None:   # `kill` stops it as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        return server.wait()
    finally:
        endpoint.withdraw(cfg)


def _sql_user(cfg: Config, args: argparse.Namespace) -> int:
    """``sql-server user NAME``: add a login, change its password, or remove it."""
    import getpass

    from lakehouse import endpoint

    if not args.user:
        raise ConfigError("sql-server user: name the user (lakeforge sql-server user NAME)")
    if args.remove:
        if not endpoint.set_user(cfg, args.user, None):
            raise ConfigError(f"SQL user {args.user!r} is not in {cfg.sql_users_file}")
        print(f"removed SQL user {args.user} from {cfg.sql_users_file}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ; nothing changed")
    existed = endpoint.set_user(cfg, args.user, password)
    print(f"{'changed the password of' if existed else 'added'} SQL user {args.user} in "
          f"{cfg.sql_users_file}")
    if cfg.sql_server.auth != "password":
        print("logins are checked once sql_server.auth is password")
    return 0


def _cmd_metastore(cfg: Config, args: argparse.Namespace) -> int:
    from lakehouse import metastore

    ms = cfg.metastore
    where = f"{ms.host}:{ms.port}/{ms.database}"
    if args.action == "start":
        print(f"metastore running: {metastore.start(cfg)} (data in {metastore.data_dir(cfg)})")
    elif args.action == "init":
        created = metastore.init_schema(cfg)
        print(f"metastore schema {'created' if created else 'already present'} in {where}")
    elif args.action == "stop":
        print("stopped" if metastore.stop(cfg) else "not running")
    else:
        up = metastore.running(cfg)
        print(f"local PostgreSQL metastore {'running' if up else 'not running'} on {where} "
              f"(metastore.kind={ms.kind})")
        return 0 if up else 1
    return 0


def _cmd_lake_server(cfg: Config, args: argparse.Namespace) -> int:
    from lakehouse import objectstore

    if args.action == "start":
        url = objectstore.start(cfg)
        print(f"S3 server running on {url} (objects in {objectstore.state_dir(cfg) / 'data'});"
              f" put a job's lake on it with:")
    if args.action in ("start", "env"):
        for key, value in objectstore.environment(cfg, args.prefix).items():
            print(f"export {key}={value}")
    elif args.action == "stop":
        print("stopped" if objectstore.stop(cfg) else "not running")
    else:
        up = objectstore.running(cfg)
        print(f"local S3 server {'running' if up else 'not running'} on "
              f"{objectstore.endpoint(cfg)}")
        return 0 if up else 1
    return 0


def _cmd_register(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.metastore import register_tables

    added = register_tables(spark, cfg)
    print(f"registered {len(added)} table(s) in the {cfg.metastore.kind} metastore"
          + "".join(f"\n  {name}" for name in added))


def _cmd_models(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.errors import RegistryMismatchError
    from lakehouse.render import format_table
    from models import tracking
    from models.store import ModelStore

    if not cfg.tracking.enabled:
        raise ConfigError("lakeforge models: tracking.enabled is false; the models table is "
                          "the only registry (`lakeforge sql 'SELECT * FROM models'`)")
    tracker = tracking.Tracker(cfg)
    if args.action == "alias":
        if len(args.names) != 2 or "@" not in args.names[0] or not args.names[1].isdigit():
            raise ConfigError("usage: lakeforge models alias NAME@ALIAS VERSION")
        (name, alias), version = args.names[0].split("@", 1), int(args.names[1])
        ModelStore(spark, cfg).get(name, version)          # a version the table holds
        tracker.set_alias(name, alias, version)
        print(f"{name}@{alias} -> v{version}")
        return
    records = [r for r in ModelStore(spark, cfg).records()
               if not args.names or r.name in args.names]
    if args.action == "sync":
        done = tracking.sync(tracker, records)
        print(f"registered in MLflow: {', '.join(f'{n} v{v}' for n, v in done) or 'nothing'}")
    tracker.mark_gone()
    found = [d for d in tracking.check(tracker, records)
             if not args.names or d.name in args.names]
    if args.action == "list":
        theirs = {name: tracker.versions(name) for name in {r.name for r in records}}
        print(format_table(
            ["model", "version", "family", "training table", "MLflow run", "in MLflow"],
            [(r.name, r.version, r.family, f"{r.training_table} v{r.training_version}",
              r.mlflow_run_id or "-", "yes" if r.version in theirs[r.name] else "no")
             for r in records]))
        print(f"tracking store: {tracking.safe_uri(tracker.uri)}")
        return
    if found:
        print(format_table(["model", "version", "disagreement"],
                           [(d.name, d.version, d.problem) for d in found]))
        raise RegistryMismatchError(
            f"{len(found)} disagreement(s) between the models table and MLflow's registry "
            f"at {tracking.safe_uri(tracker.uri)}; `lakeforge models sync` registers in "
            f"MLflow what it lacks")
    print(f"models check: {len(records)} version(s) agree with MLflow's registry")


def _cmd_mlflow(cfg: Config, args: argparse.Namespace) -> int:
    import signal
    import subprocess

    from models import tracking

    tracker = tracking.Tracker(cfg)            # creates the store; marks killed runs
    tracker.mark_gone()
    host, port = args.host or cfg.tracking.ui_host, args.port or cfg.tracking.ui_port
    server = subprocess.Popen(tracking.ui_command(cfg, host, port),
                              env={**os.environ, **tracking.mlflow_env(cfg)},
                              start_new_session=True)
    log.info("MLflow UI on http://%s:%d/ over %s (stop with Ctrl-C)", host, port,
             tracking.safe_uri(tracker.uri))

    def stop(*_):
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)   # mlflow leaves its uvicorn child else

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        stop()
        return server.wait()


def _cmd_maintain(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.maintain import maintain
    from lakehouse.render import format_table

    results = maintain(spark, cfg, args.tables)
    print(format_table(
        ["table", "files compacted", "files written", "vacuumed", "note"],
        [(r.table, r.files_removed_by_optimize, r.files_added_by_optimize, r.vacuumed,
          "" if r.optimized else "training table: not compacted (one shard per rank)")
         for r in results]))


def _cmd_tables(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.catalog import list_tables
    from lakehouse.render import format_table

    infos = list_tables(spark, cfg)
    print(format_table(["table", "rows", "version"], [(t.name, t.rows, t.version) for t in infos]))


def _cmd_sql(spark, cfg: Config, args: argparse.Namespace) -> None:
    from lakehouse.catalog import stream_sql

    _write(stream_sql(spark, cfg, args.query, args.limit, args.format))


def _write(pieces: Iterable[str]) -> None:
    """Write text pieces to stdout as they come (a long csv or json result streams)."""
    for piece in pieces:
        sys.stdout.write(piece)
    sys.stdout.flush()


def _through_endpoint(cfg: Config, args: argparse.Namespace) -> bool:
    """Answer ``sql`` or ``tables`` through this home's running SQL endpoint, if there is one."""
    from lakehouse import endpoint
    from lakehouse.render import format_table

    found = endpoint.running(cfg)
    if found is None:
        return False
    if args.command == "sql":
        _write(endpoint.stream_sql(cfg, found, args.query, args.limit, args.format))
    else:
        print(format_table(["table", "rows", "version"], endpoint.list_tables(cfg, found)))
    return True


def _cmd_demo(spark, cfg: Config, args: argparse.Namespace) -> None:
    from jobs.demo import run_demo

    run_demo(spark, cfg, args.batch, train=args.train)


def _cmd_catalog(cfg: Config, args: argparse.Namespace) -> int:
    from lakehouse.dataset_check import resolve_datasets
    from lakehouse.render import format_table

    action, names = "list", list(args.names)
    if names and names[0] in ("list", "check", "parsers"):
        action, names = names[0], names[1:]
    if action == "parsers":
        from lakehouse.sources import PARSERS, parser_help

        print(format_table(["parser", "reads"], [(n, parser_help(n)) for n in PARSERS]))
        return 0
    entries = resolve_datasets(cfg, names)
    if action == "list":
        rows = [(e.name, e.kind or "-", e.table_name, e.source.describe(),
                 ", ".join(e.silver.keys), ", ".join(r.name for r in e.silver.rules) or "-",
                 f"overrides the bundled entry ({cfg.overrides[e.name]})"
                 if e.name in cfg.overrides else "")
                for e in entries]
        print(format_table(["data set", "kind", "table (bronze_/silver_)", "source", "keys",
                            "rules", "note"], rows))
        return 0
    from lakehouse.dataset_check import check_datasets
    from lakehouse.session import build_spark

    for e in entries:
        if e.name in cfg.overrides:
            log.warning("data set %s: %s overrides the bundled entry of that name (its keys "
                        "replace the bundled ones; the rest of the bundled entry stays)",
                        e.name, cfg.overrides[e.name])
    check_datasets(build_spark(cfg), cfg, [e.name for e in entries])
    print(f"catalog ok: {len(entries)} data set(s) checked")
    return 0


def _cmd_submit(cfg: Config, args: argparse.Namespace) -> int:
    import json
    import shlex

    from lakehouse.submit import run_job, submit_command, submit_settings

    overrides = list(args.overrides)
    if args.master:
        cfg = dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark, master=args.master))
        overrides.append(f"spark.master={args.master}")
    py_files = [args.py_files] if args.py_files else []
    job_args = [*args.job_args, *(f"--set={o}" for o in overrides)]
    if args.print_json:
        print(json.dumps(submit_settings(cfg, args.job, py_files, args.conf_dir), indent=2))
        return 0
    if args.print_only:
        print(shlex.join(submit_command(cfg, args.job, job_args, py_files)))
        return 0
    return run_job(cfg, args.job, job_args, py_files=py_files, conf_dir=args.conf_dir)


def _cmd_run(spark, cfg: Config, args: argparse.Namespace) -> None:
    from jobs.pipeline import run_pipeline
    from lakehouse.render import format_table

    results = run_pipeline(spark, cfg, args.pipeline, args.batch, args.definitions,
                           start_at=args.start_at)
    print(format_table(["step", "command", "seconds"],
                       [(r.name, f"lakeforge {r.command}", round(r.seconds, 1)) for r in results]))


COMMANDS: dict[str, Callable] = {
    "ingest": _cmd_ingest, "curate": _cmd_curate, "maintain": _cmd_maintain,
    "features": _cmd_features, "train": _cmd_train, "score": _cmd_score,
    "tables": _cmd_tables, "sql": _cmd_sql, "demo": _cmd_demo, "run": _cmd_run,
    "metastore": _cmd_register, "stream": _cmd_stream, "models": _cmd_models,
}


def _from_spark(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised because of, an error of Spark's JVM."""
    from lakehouse.errors import error_condition

    seen = 0
    while exc is not None and seen < 10:
        if hasattr(exc, "java_exception") or error_condition(exc) is not None:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _first_line(exc: BaseException) -> str:
    java = getattr(exc, "java_exception", None)   # py4j's first line names only the call
    try:
        text = java.toString() if java is not None else str(exc)
    except Exception:                             # the JVM is gone
        text = type(exc).__name__
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def _traced(exc: BaseException) -> str:
    """Where the driver's log (Spark's stack traces) is, for a failure that came from Spark.

    The Python traceback is added to that log. Empty when Spark had no part in it.
    """
    if "pyspark" not in sys.modules or not _from_spark(exc):
        return ""
    import traceback

    from pyspark.sql import SparkSession

    from lakehouse.session import spark_log_file

    spark = SparkSession.getActiveSession()
    path = spark_log_file(spark) if spark is not None else None
    if path is None:
        return ""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} lakeforge: "
                  f"{''.join(traceback.format_exception(exc))}")
    return f" (stack trace: {path})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The process exit code: 0 on success, 2 for a lakeforge error (bad input,
        config or data), which is printed as one line naming the problem, 1 for any
        other error of Spark (one line too; the stack traces are in the driver's log
        file, and on the terminal with ``--verbose``).
    """
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # inherited by local Python workers
    start = time.monotonic()
    try:
        cfg = load_config(args.overrides, args.conf_dir)
        if args.verbose:
            cfg = dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark, console_log=True))
        if args.command == "catalog":
            return _cmd_catalog(cfg, args)
        if args.command == "submit":
            return _cmd_submit(cfg, args)
        if args.command == "sql-server":
            return _cmd_sql_server(cfg, args)
        if args.command == "metastore" and args.action != "register":
            return _cmd_metastore(cfg, args)
        if args.command == "lake-server":
            return _cmd_lake_server(cfg, args)
        if args.command == "kafka":
            return _cmd_kafka(cfg, args)
        if args.command == "mlflow":
            return _cmd_mlflow(cfg, args)
        if args.command in ("sql", "tables") and _through_endpoint(cfg, args):
            log.info("%s finished in %.1f s", args.command, time.monotonic() - start)
            return 0
        from lakehouse.session import build_spark

        spark = build_spark(cfg)
        COMMANDS[args.command](spark, cfg, args)
    except LakeforgeError as exc:
        print(f"lakeforge {args.command}: error: {exc}{_traced(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.verbose or not _from_spark(exc):
            raise
        print(f"lakeforge {args.command}: error: {_first_line(exc)}{_traced(exc)}",
              file=sys.stderr)
        return 1
    log.info("%s finished in %.1f s", args.command, time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
