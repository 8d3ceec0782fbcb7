"""The driver JVM's class-data-sharing archive: chosen per JVM and class path, mapped."""

import dataclasses
import os
import subprocess
from pathlib import Path

from lakehouse.class_archive import _prune, driver_archive
from lakehouse.jvm import archive_options, archive_path
from lakehouse.session import spark_conf


def test_the_session_driver_maps_the_archive_setup_built(spark, base_cfg):
    path = driver_archive(base_cfg)
    assert path is not None and path.is_file(), f"no class archive {path}; run scripts/setup.sh"
    assert f"-XX:SharedArchiveFile={path}" in spark.conf.get("spark.driver.extraJavaOptions")
    pid = spark.sparkContext._jvm.ProcessHandle.current().pid()
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert str(path) in maps                   # the JVM validated it and mapped it


def test_an_archive_per_class_path_used_once_built_and_off_when_asked(base_cfg, tmp_path):
    cfg = dataclasses.replace(base_cfg, spark=dataclasses.replace(
        base_cfg.spark, class_archive_dir=str(tmp_path)))
    path = archive_path(cfg)
    assert path.parent == tmp_path and archive_options(cfg) == []    # not built: no option
    assert archive_path(cfg, "/opt/other.jar") != path
    jar = tmp_path / "extra.jar"
    jar.write_bytes(b"PK")
    before = archive_path(cfg, str(jar))
    os.utime(jar, ns=(0, 0))                   # installed again: the JVM would refuse it
    assert archive_path(cfg, str(jar)) != before
    path.write_bytes(b"")
    assert archive_options(cfg) == [f"-XX:SharedArchiveFile={path}"]
    off = dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark, class_archive=False))
    assert archive_path(off) is None and archive_options(off) == []
    assert "SharedArchiveFile" not in spark_conf(off)["spark.driver.extraJavaOptions"]
    assert driver_archive(cfg) == archive_path(
        cfg, spark_conf(cfg).get("spark.driver.extraClassPath", ""))


def test_building_keeps_only_the_newest_archives(tmp_path):
    for age in range(5):
        old = tmp_path / f"spark-driver-{age:016x}.jsa"
        old.write_bytes(b"")
        os.utime(old, (1_000_000 - age, 1_000_000 - age))
    (tmp_path / "unrelated.txt").write_text("kept")
    gone = _finished_pid()
    (tmp_path / f".spark-driver-{0:016x}.jsa.{gone}.partial").write_bytes(b"")
    building = tmp_path / f".spark-driver-{1:016x}.jsa.{os.getpid()}.partial"
    building.write_bytes(b"")
    _prune(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [building.name] + [
        f"spark-driver-{age:016x}.jsa" for age in range(3)] + ["unrelated.txt"]


def _finished_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
