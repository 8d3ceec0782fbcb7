"""The pid files of the servers the project starts (S3Proxy, the Kafka broker)."""

from __future__ import annotations

import sys

from lakehouse import daemon


def test_a_pid_file_names_only_the_process_it_started(tmp_path):
    pid_file, log = tmp_path / "server.pid", tmp_path / "server.log"
    proc = daemon.spawn([sys.executable, "-c", "import time; time.sleep(60)"], log, pid_file)
    try:
        assert daemon.read_pid(pid_file) == proc.pid
        # The same pid with another start time: what a file left by a server that died
        # looks like once its pid is another process's. Not reported, and not stopped.
        pid, started = pid_file.read_text().split()
        pid_file.write_text(f"{pid} {int(started) - 1}")
        assert daemon.read_pid(pid_file) is None
        assert daemon.stop(pid_file) is False and proc.poll() is None
        assert not pid_file.exists()
        # A file of the pid alone (as written before start times were kept) still works.
        pid_file.write_text(pid)
        assert daemon.stop(pid_file) is True
        assert not daemon.alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
