"""A local Kafka broker for streams: one node in KRaft mode, run by ``lakeforge kafka``.

Apache Kafka's broker is a set of jars on Maven Central (pinned in
``lakehouse/jars/kafka-broker.txt``, fetched by set-up); this module runs it on
``stream.kafka_server.host:port`` with its controller on ``controller_port``, its logs
(the topics' data) under ``home/kafka/data``, and nothing but loopback listeners. It is
there to try and test streams with the same code path a team's own Kafka cluster takes:
a data set's ``source.kafka`` names a topic, and ``stream.kafka_bootstrap`` (or the
entry's own ``bootstrap``) names the brokers.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from lakehouse import daemon
from lakehouse.config import Config
from lakehouse.errors import LakeforgeError
from lakehouse.jvm import java_binary, pinned_jars

log = logging.getLogger(__name__)
START_SECONDS = 90


class KafkaError(LakeforgeError):
    """The local Kafka broker cannot be started or reached."""


def state_dir(cfg: Config) -> Path:
    """The broker's folder: its data (``data/``), properties, pid and log."""
    return cfg.home / "kafka"


def bootstrap(cfg: Config) -> str:
    """The local broker's ``host:port``."""
    server = cfg.stream.kafka_server
    return f"{server.host}:{server.port}"


def running(cfg: Config) -> bool:
    """Whether this home's broker runs and answers."""
    pid = daemon.read_pid(state_dir(cfg) / "kafka.pid")
    return pid is not None and daemon.alive(pid) and _listening(cfg)


def start(cfg: Config) -> str:
    """Start the broker (unless it runs); format its storage the first time.

    Returns:
        Its bootstrap address (``host:port``).

    Raises:
        KafkaError: jars or Java missing, a port taken by another program, or a broker
            that did not answer within 90 s (its log is named).
    """
    if running(cfg):
        return bootstrap(cfg)
    server = cfg.stream.kafka_server
    for port in (server.port, server.controller_port):
        if daemon.listening(server.host, port):
            raise KafkaError(f"{server.host}:{port} is taken by another program; set "
                             f"stream.kafka_server.port and controller_port")
    jars = pinned_jars(cfg, "kafka-broker")
    missing = [j for j in jars if not j.is_file()]
    if missing:
        raise KafkaError(f"{len(missing)} of the Kafka broker's jars are missing (e.g. "
                         f"{missing[0]}); run `make setup`")
    java = java_binary()
    if java is None:
        raise KafkaError("no Java runtime found to run Kafka (JAVA_HOME or java)")
    folder = state_dir(cfg)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    properties = _write_properties(cfg, folder)
    classpath = os.pathsep.join(str(j) for j in jars)
    logging_option = f"-Dlog4j.configuration=file:{_write_log4j(folder)}"
    if not (folder / "data" / "meta.properties").exists():
        cluster = "-"
        while cluster.startswith("-"):    # the tool would read "-..." as an option
            cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        formatted = daemon.spawn(
            [str(java), "-Xmx128m", logging_option, "-cp", classpath, "kafka.tools.StorageTool",
             "format", "-t", cluster, "-c", str(properties), "--ignore-formatted"],
            folder / "format.log", folder / "format.pid")
        if formatted.wait(timeout=120) != 0:
            raise KafkaError(f"formatting the broker's storage failed; see {folder / 'format.log'}")
        (folder / "format.pid").unlink(missing_ok=True)
    proc = daemon.spawn(
        [str(java), "-Xms32m", f"-Xmx{server.heap}", "-XX:+UseSerialGC",
         "-Djava.awt.headless=true", logging_option, "-cp", classpath, "kafka.Kafka",
         str(properties)], folder / "broker.out", folder / "kafka.pid")
    if not daemon.wait_until(lambda: _listening(cfg), proc, START_SECONDS):
        stop(cfg)
        raise KafkaError(f"Kafka did not start on {bootstrap(cfg)}; see {folder / 'server.log'}")
    log.info("Kafka broker on %s (data in %s)", bootstrap(cfg), folder / "data")
    return bootstrap(cfg)


def stop(cfg: Config) -> bool:
    """Stop this home's broker; False when none ran."""
    return daemon.stop(state_dir(cfg) / "kafka.pid")


def send(bootstrap_servers: str, topic: str, files: Sequence[Path], key: str | None = None
         ) -> int:
    """Send each non-empty line of ``files`` to ``topic`` as one record.

    Args:
        bootstrap_servers: the brokers (``host:port,...``).
        topic: the topic (the broker creates it on first use).
        files: text files of records, one a line (JSON or CSV).
        key: a JSON field whose value becomes each record's message key, so that the
            records of one key land in one partition, in order. A line that is not JSON
            or lacks the field is sent without a key (the stream's ingest quarantines
            what does not parse).

    Returns:
        How many records were sent (and acknowledged).

    Raises:
        KafkaError: records the brokers did not take.
    """
    keyless = 0

    def records() -> Iterator[tuple[bytes | None, str]]:
        nonlocal keyless
        for path in files:
            with open(path, encoding="utf-8") as lines:
                for line in lines:
                    text = line.rstrip("\n")
                    if text.strip():
                        message_key = _key(text, key)
                        keyless += key is not None and message_key is None
                        yield message_key, text

    sent = send_records(bootstrap_servers, topic, records())
    if keyless:
        log.warning("%d record(s) sent without a key: not JSON, or no field %r", keyless, key)
    return sent


def send_records(bootstrap_servers: str, topic: str,
                 records: Iterable[tuple[bytes | None, str]], rate: float = 0) -> int:
    """Send ``(key, value)`` records to ``topic``, at most ``rate`` a second (0: no limit).

    Returns:
        How many records were sent (and acknowledged).

    Raises:
        KafkaError: records the brokers did not take.
    """
    from confluent_kafka import Producer

    # librdkafka's own messages go through logging (its retries while a new broker
    # loads are warnings that need no one's attention).
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True,
                         "log_level": 3}, logger=logging.getLogger("lakehouse.kafka.client"))
    failed: list[str] = []

    def delivered(error, _message) -> None:
        if error is not None:
            failed.append(str(error))

    sent, start = 0, time.monotonic()
    for message_key, text in records:
        if rate:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                producer.flush(ahead)       # delivers while it waits
                time.sleep(max(0.0, sent / rate - (time.monotonic() - start)))
        producer.produce(topic, value=text.encode(), key=message_key, on_delivery=delivered)
        producer.poll(0)
        sent += 1
    left = producer.flush(60)
    if left or failed:
        raise KafkaError(f"{left + len(failed)} of {sent} record(s) were not taken by "
                         f"{bootstrap_servers}: {failed[0] if failed else 'timed out'}")
    return sent


def ensure_topic(bootstrap_servers: str, topic: str, seconds: float = 30) -> None:
    """Create ``topic`` (one partition) unless it exists, and wait until it is served.

    A streaming query started on a topic nobody has created yet fails reading its offsets
    (``UnknownTopicOrPartitionException``) while a producer's first record creates it.

    Raises:
        KafkaError: the brokers did not create or serve the topic in time.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    deadline = time.monotonic() + seconds
    while topic not in admin.list_topics(timeout=seconds).topics:
        future = admin.create_topics([NewTopic(topic, 1)])[topic]
        try:
            future.result(timeout=seconds)
        except Exception as exc:                      # created meanwhile, or refused
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and time.monotonic() > deadline:
                raise KafkaError(f"topic {topic} on {bootstrap_servers}: {exc}") from exc
        if time.monotonic() > deadline:
            raise KafkaError(f"topic {topic} on {bootstrap_servers}: not served after "
                             f"{seconds:.0f} s")
        time.sleep(0.2)


def _key(text: str, field: str | None) -> bytes | None:
    if field is None:
        return None
    try:
        value = json.loads(text)[field]
    except (ValueError, KeyError, TypeError):
        return None
    return None if value is None else str(value).encode()


def _listening(cfg: Config) -> bool:
    server = cfg.stream.kafka_server
    return daemon.listening(server.host, server.port)


def _write_properties(cfg: Config, folder: Path) -> Path:
    server = cfg.stream.kafka_server
    host, port, controller = server.host, server.port, server.controller_port
    path = folder / "server.properties"
    path.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{host}:{controller}",
        f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}",
        f"advertised.listeners=PLAINTEXT://{host}:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={folder / 'data'}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
    ]) + "\n")
    return path


def _write_log4j(folder: Path) -> Path:
    path = folder / "log4j.properties"
    path.write_text("\n".join([
        "log4j.rootLogger=INFO, file",
        "log4j.appender.file=org.apache.log4j.FileAppender",
        f"log4j.appender.file.File={folder / 'server.log'}",
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout",
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n",
        "log4j.logger.kafka=INFO",
        "log4j.logger.org.apache.kafka=INFO",
    ]) + "\n")
    return path
