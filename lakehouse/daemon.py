"""Local servers the project starts in the background (S3Proxy, the Kafka broker).

Each runs in a process group of its own, its pid in a file under the home, so that a
later command (or another shell) can tell whether it runs and stop it. The file also
holds the process's start time where the system tells it (Linux): a pid file left by a
server that died, or by a machine that restarted, names a pid that another process may
have by now, and that process is neither reported as the server nor stopped.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def read_pid(path: Path) -> int | None:
    """The pid a pid file names, or None.

    None when there is no file, or when the pid's process is not the one that was
    started (the file's start time differs from the pid's current one).
    """
    try:
        pid, _, started = path.read_text().strip().partition(" ")
        found = int(pid)
    except (FileNotFoundError, ValueError):
        return None
    if started and started != str(start_time(found)):
        return None
    return found


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (Linux's /proc), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: count fields after its end.
    return int(stat[stat.rindex(")") + 2:].split()[19])


def owner_line() -> str:
    """The owner line of the calling process, ``host pid`` (see :func:`owner_gone`)."""
    return f"{socket.gethostname()} {os.getpid()}"


def owner_gone(owner: str) -> bool:
    """Whether an owner line (``host pid``) names a process of this host that has ended.

    A process of another host, or a line that is not an owner line, is not known to
    be gone.
    """
    their_host, _, pid = owner.strip().partition(" ")
    return their_host == socket.gethostname() and pid.isdigit() and not alive(int(pid))


def run_may_be_alive(owner: str, since: dt.datetime, stale_minutes: float) -> bool:
    """Whether the run that wrote ``owner`` (at ``since``, local time) may still be running.

    The calling process itself does not count (its own earlier attempt ended). A run of
    this host is alive while its process is; one of another host, whose process cannot
    be asked, until ``stale_minutes`` have passed since ``since``.
    """
    if not owner or owner == owner_line() or owner_gone(owner):
        return False
    if owner.partition(" ")[0] == socket.gethostname():
        return True
    return dt.datetime.now() - since < dt.timedelta(minutes=stale_minutes)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie child of this process does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def listening(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def spawn(command: Sequence[str], log_file: Path, pid_file: Path) -> subprocess.Popen:
    """Start ``command`` in a session of its own, output appended to ``log_file``."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    started = start_time(proc.pid)
    pid_file.write_text(f"{proc.pid} {started}" if started is not None else str(proc.pid))
    return proc


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, seconds: float) -> bool:
    """Poll ``ready`` until it holds (True), or the process ends or time runs out (False)."""
    deadline = time.monotonic() + seconds
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop(pid_file: Path) -> bool:
    """Stop the process group a pid file names (TERM, then KILL after 10 s); False if none ran."""
    pid = read_pid(pid_file)
    pid_file.unlink(missing_ok=True)
    if pid is None or not alive(pid):
        return False
    os.killpg(pid, signal.SIGTERM)
    for _ in range(100):
        if not alive(pid):
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    return True
