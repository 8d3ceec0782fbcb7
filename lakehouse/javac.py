"""Small Java classes shipped as source in ``lakehouse/java/``, compiled once into a jar.

Spark and Hive call some of lakeforge's code through Java interfaces (Delta's log store,
HiveServer2's password check). Their sources are package data, so a driver that imports
lakeforge from a zip finds them too. Each is compiled with the JDK's ``javac`` into
``~/.cache/lakeforge/jars`` (``LAKEFORGE_CACHE``), under a name that carries a digest of
the source and of the versions it compiles against: a new source or version gets a new
jar, and an existing one is never rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import subprocess
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from lakehouse.errors import ConfigError
from lakehouse.jvm import java_binary


def source(relative: str) -> bytes:
    """A Java source under the ``lakehouse`` package (read as package data)."""
    return importlib.resources.files("lakehouse").joinpath(relative).read_bytes()


def jar_path(name: str, relative: str, versions: str) -> Path:
    """Where the jar of one source lives: ``<name>-<digest of source and versions>.jar``."""
    digest = hashlib.sha256(source(relative))
    digest.update(versions.encode())
    cache = Path(os.environ.get("LAKEFORGE_CACHE") or "~/.cache/lakeforge").expanduser()
    return cache / "jars" / f"{name}-{digest.hexdigest()[:12]}.jar"


def compile_jar(name: str, relative: str, classpath: Sequence[Path], versions: str,
                what: str) -> Path:
    """Compile one source against ``classpath`` unless its jar exists; return the jar.

    Args:
        name: the jar's name stem (``lakeforge-logstore``).
        relative: the source's path in the ``lakehouse`` package.
        classpath: jars the source compiles against (each must exist).
        versions: the versions of those jars, part of the jar's digest.
        what: what is compiled, for error messages (``the S3 log store``).

    Raises:
        ConfigError: no ``javac`` next to the JVM, a jar to compile against is missing,
            or the compiler failed (its output is named).
    """
    target = jar_path(name, relative, versions)
    if target.is_file():
        return target
    java = java_binary()
    javac = java.parent / "javac" if java is not None else None
    if javac is None or not javac.is_file():
        raise ConfigError(f"compiling {what} needs a JDK's javac next to {java or 'java'}; "
                          "install a JDK (Debian: default-jdk-headless)")
    missing = [str(j) for j in classpath if not j.is_file()]
    if missing or not classpath:
        raise ConfigError(f"compiling {what} needs {', '.join(missing) or 'jars'}; "
                          "run `make setup`")
    with tempfile.TemporaryDirectory() as work:
        java_file = Path(work) / "src" / Path(relative).name
        java_file.parent.mkdir()
        java_file.write_bytes(source(relative))
        classes = Path(work) / "classes"
        out = subprocess.run([str(javac), "--release", "17", "-nowarn",
                              "-cp", os.pathsep.join(map(str, classpath)), "-d", str(classes),
                              str(java_file)], capture_output=True, text=True, check=False)
        if out.returncode:
            raise ConfigError(f"compiling {java_file.name} failed: {out.stderr.strip()[:2000]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
            for path in sorted(classes.rglob("*.class")):
                archive.write(path, path.relative_to(classes).as_posix())
        partial.replace(target)
    return target
