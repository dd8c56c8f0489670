"""The driver JVM of a local run (the demo, ``python -m job`` without EMR, the tests, the bench): how it starts fast.

A step's JVM lives for seconds to minutes, and most of a small run's fixed cost is that JVM starting cold: loading
and verifying Spark's classes and compiling its start-up paths (``make bench`` measures it apart, side by side:
tests/benchmark/run.py ``jvm_start_costs``). Two JVM options cut it:

- ``-XX:TieredStopAtLevel=1``: C1 only. The driver's own work (planning; in local mode also Arrow to Parquet for a few
  hundred rows a second) never needs C2's peak code, and C2 compiling Spark's hot start-up paths costs CPU the run
  needs.
- a class-data-sharing archive (JDK 13+ dynamic archives): the classes a run loaded, already parsed and verified,
  mapped from one file at the next start. The first run of a Spark and Java installation starts with
  ``-XX:+RecordDynamicDumpInfo``; once its work is done, :func:`dump_archive` asks the JVM (``jcmd VM.cds
  dynamic_dump``) to write the archive to a temporary file, which is then renamed into place, so a reader only ever
  finds a whole archive; runs started after that map it. The JVM checks an archive against itself and its class path
  and, if they differ, runs without it (a warning on stderr), so a stale archive costs speed, never a run.

The archive is about 100 MB, under ``$XDG_CACHE_HOME/mxnet-spark-inference/jvm`` (``~/.cache`` when unset), keyed by
the Java binary and the Spark installation; ``JOB_JVM_CACHE`` names another directory, or ``off`` for none.

Not used on EMR: there spark-submit starts the driver with the cluster's own options, and the executors' JVMs start on
other nodes (docs/performance.md says what a cluster would need).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from typing import Optional

C1_ONLY = "-XX:TieredStopAtLevel=1"
# The JVM logs warnings (an archive it cannot use, classes it cannot archive) to stdout by default; the job's stdout
# is its own.
WARNINGS_TO_STDERR = "-Xlog:disable -Xlog:all=warning:stderr"
RECORD = "-XX:+RecordDynamicDumpInfo"
CACHE_VARIABLE = "JOB_JVM_CACHE"
DUMP_TIMEOUT_S = 120


def cache_directory() -> Optional[str]:
    """Where archives are kept, or None when ``JOB_JVM_CACHE=off``."""
    chosen = os.environ.get(CACHE_VARIABLE)
    if chosen == "off":
        return None
    if chosen:
        return chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mxnet-spark-inference", "jvm")


def _java() -> Optional[str]:
    """The java binary spark-submit will run: ``$JAVA_HOME/bin/java``, else ``java`` on the PATH."""
    java_home = os.environ.get("JAVA_HOME")
    found = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    return os.path.realpath(found) if found and os.path.exists(found) else None


def archive_path(directory: str) -> Optional[str]:
    """The archive of this Java binary and this Spark installation (its jars: names and sizes), or None when no
    java is found (Spark then fails to start with its own message)."""
    java = _java()
    if java is None:
        return None
    import pyspark

    jars = os.path.join(os.path.dirname(pyspark.__file__), "jars")
    digest = hashlib.sha256()
    digest.update(f"{java}\0{os.stat(java).st_mtime_ns}\0{pyspark.__version__}\0".encode())
    for name in sorted(os.listdir(jars)) if os.path.isdir(jars) else ():
        digest.update(f"{name}\0{os.path.getsize(os.path.join(jars, name))}\0".encode())
    return os.path.join(directory, f"spark-{pyspark.__version__}-{digest.hexdigest()[:16]}.jsa")


class DriverJvm:
    """The options a new local driver JVM starts with, and the archive to dump from it when it has none."""

    def __init__(self, directory: Optional[str] = None):
        directory = directory if directory is not None else cache_directory()
        self.archive = archive_path(directory) if directory else None
        self.has_archive = bool(self.archive and os.path.isfile(self.archive))

    def options(self) -> str:
        if self.archive is None:
            return f"{C1_ONLY} {WARNINGS_TO_STDERR}"
        use = f"-XX:SharedArchiveFile={self.archive}" if self.has_archive else RECORD
        return f"{C1_ONLY} {WARNINGS_TO_STDERR} {use}"

    def wants_dump(self) -> bool:
        return self.archive is not None and not self.has_archive


def dump_archive(spark, archive: str) -> threading.Thread:
    """Start writing ``spark``'s driver JVM's loaded classes to ``archive`` (the JVM was started with
    ``-XX:+RecordDynamicDumpInfo``); returns the thread, to join before the process ends. The JVM pauses at a
    safepoint while it writes (seconds), which is why the job starts it once its Spark work is done. A failure
    (no jcmd, no attach permission, no space) is a warning: the next run records and tries again."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    java = _java()
    jcmd = os.path.join(os.path.dirname(java), "jcmd") if java else None
    if not jcmd or not os.path.exists(jcmd):
        jcmd = shutil.which("jcmd")

    def dump() -> None:
        if jcmd is None:
            print("warning: no jcmd next to java or on the PATH, so no JVM class archive was written; later local "
                  "runs start their JVM without one", file=sys.stderr)
            return
        os.makedirs(os.path.dirname(archive), exist_ok=True)
        partial = f"{archive}.{os.getpid()}.partial"
        try:
            completed = subprocess.run([jcmd, str(pid), "VM.cds", "dynamic_dump", partial], capture_output=True,
                                       text=True, timeout=DUMP_TIMEOUT_S)
            if completed.returncode == 0 and os.path.isfile(partial) and os.path.getsize(partial) > 0:
                os.replace(partial, archive)  # atomic: a run starting now finds no archive or a whole one
                return
            problem = (completed.stderr or completed.stdout).strip()[-300:]
        except (OSError, subprocess.SubprocessError) as error:
            problem = f"{type(error).__name__}: {error}"
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        print(f"warning: the JVM class archive {archive} was not written ({problem}); later local runs start "
              "their JVM without one", file=sys.stderr)

    thread = threading.Thread(target=dump, name="jvm-class-archive", daemon=True)
    thread.start()
    return thread
