"""A local run's driver JVM (job/local_jvm.py): C1 only, and a class archive written by the first run of an
installation and mapped by the runs after it.

Each run here is a fresh Python process (PySpark starts one driver JVM per process, and its options only matter
then), running the real job on three photos with a cache directory of the test's own. What this cannot prove: the
archive's effect on speed (make bench measures it side by side: tests/benchmark/run.py jvm_start_costs), and an EMR
node, where the job does not use it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from job.local_jvm import C1_ONLY, CACHE_VARIABLE, RECORD, DriverJvm, archive_path

REPO = Path(__file__).resolve().parents[2]
# Runs the job, then asks its JVM whether it mapped a class archive (HotSpot's UseSharedSpaces) and with which options.
RUN_AND_REPORT = """
import json, sys
from job.config import parse_args
from job.pipeline import run, spark_session
summary = run(parse_args(sys.argv[1:]), master="local[2]")
jvm = spark_session("local[2]").sparkContext._jvm
bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
    jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
print(json.dumps({"ok": summary["counts"]["ok"], "shared": bean.getVMOption("UseSharedSpaces").getValue(),
                  "options": list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())}))
"""


def _run_job(inputs: Path, package: str, output: Path, cache: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, "--input", str(inputs), "--model", package, "--output", str(output),
         "--overwrite"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, CACHE_VARIABLE: str(cache), "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.spark
def test_the_first_run_writes_the_class_archive_and_the_next_one_starts_from_it(tmp_path, cifar_samples,
                                                                                 untrained_package):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, data, _ in cifar_samples[:3]:
        (inputs / name).write_bytes(data)
    cache = tmp_path / "cache"
    archive = Path(archive_path(str(cache)))

    first = _run_job(inputs, untrained_package, tmp_path / "first", cache)
    assert first["ok"] == 3 and C1_ONLY in first["options"] and RECORD in first["options"]
    assert archive.is_file() and archive.stat().st_size > 1_000_000
    assert [path.name for path in cache.iterdir()] == [archive.name]  # no partial file left behind
    written = archive.stat().st_mtime_ns

    second = _run_job(inputs, untrained_package, tmp_path / "second", cache)
    assert second["ok"] == 3 and f"-XX:SharedArchiveFile={archive}" in second["options"]
    assert second["shared"] == "true"  # the JVM mapped it, not only was told of it
    assert archive.stat().st_mtime_ns == written and RECORD not in second["options"]  # read, not written again

    # An archive that is not one (a disk error, another JVM's file under the same name) costs speed, never a run.
    archive.write_bytes(b"not an archive" * 1000)
    third = _run_job(inputs, untrained_package, tmp_path / "third", cache)
    assert third["ok"] == 3 and third["shared"] == "false"


def test_options_follow_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_VARIABLE, "off")
    assert DriverJvm().options().split()[0] == C1_ONLY and "SharedArchive" not in DriverJvm().options()
    assert not DriverJvm().wants_dump()
    recording = DriverJvm(str(tmp_path))
    assert recording.wants_dump() and recording.options().endswith(RECORD)
    Path(recording.archive).write_bytes(b"x")
    assert DriverJvm(str(tmp_path)).options().endswith(f"-XX:SharedArchiveFile={recording.archive}")


def test_the_archive_is_keyed_by_the_java_binary(tmp_path, monkeypatch):
    """A JDK upgrade or another JAVA_HOME gets an archive of its own (the JVM would refuse the old one anyway)."""
    before = archive_path(str(tmp_path))
    fake_home = tmp_path / "jdk"
    (fake_home / "bin").mkdir(parents=True)
    (fake_home / "bin" / "java").write_text("#!/bin/sh\n")
    monkeypatch.setenv("JAVA_HOME", str(fake_home))
    assert archive_path(str(tmp_path)) not in (None, before)
