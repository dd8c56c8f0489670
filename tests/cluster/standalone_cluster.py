"""A Spark standalone cluster of separate processes on loopback, and the EMR step's command run against it.

``local[*]`` runs the driver and every task in one JVM: no executor ever registers late, is lost, or lives in another
process. A standalone master with several worker processes does all of that, and pyspark's wheel brings everything
it needs (``bin/spark-class``), so nothing is downloaded. It is not YARN: see the test module for what that leaves out.

Every process here is started in a new session, so it leads a process group whose id is its pid; the executors and
Python workers that a worker starts stay in its group. Teardown signals exactly those groups, by id.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

import pyspark

SPARK_BIN = Path(pyspark.__file__).parent / "bin"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
LOOPBACK = "127.0.0.1"
MASTER_URL = re.compile(r"Starting Spark master at (spark://\S+)")
WORKER_REGISTERED = re.compile(r"Successfully registered with master")
# TaskSetManager's INFO line for every task attempt the driver launches (Spark's default log level for spark-submit).
TASK_STARTED = re.compile(
    r"Starting task (\d+)\.(\d+) in stage (\d+)\.(\d+) \(TID (\d+)\) \(\S+, executor (\w+), partition (\d+),")
TASK_FINISHED = re.compile(r"Finished task \d+\.\d+ in stage \d+\.\d+ \(TID (\d+)\)")
GRACE_SECONDS = 10
T = TypeVar("T")
# EMR classifications the Spark processes read, and those only YARN's daemons read (no YARN here).
SPARK_CLASSIFICATIONS = frozenset({"spark-defaults", "spark-env"})
YARN_CLASSIFICATIONS = frozenset({"yarn-site", "capacity-scheduler"})


class ClusterError(RuntimeError):
    """A cluster process failed or did not reach the expected state in time; the message quotes its log."""


@dataclass
class Process:
    """One process we started (its own process group) and the file that holds its stdout and stderr."""

    name: str
    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, command: Sequence[str], *, log: Path, env: Mapping[str, str], cwd: Path) -> "Process":
        with open(log, "wb") as output:
            popen = subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT, env=dict(env),
                                     cwd=cwd, start_new_session=True)
        return cls(name, popen, log)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_until(self, check: Callable[[], Optional[T]], deadline: float, awaited: str) -> T:
        """Poll ``check`` until it returns something; fail when this process exits first or the deadline passes."""
        while True:
            found = check()
            if found is not None:
                return found
            if self.popen.poll() is not None:
                raise ClusterError(f"{self.name} exited with {self.popen.returncode} before {awaited}; last lines of "
                                   f"{self.log}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {awaited}; last lines of {self.log}:\n{self.tail()}")
            time.sleep(0.1)

    def wait_for(self, pattern: re.Pattern, deadline: float) -> re.Match:
        """Block until ``pattern`` appears in this process's log."""
        return self.wait_until(lambda: pattern.search(self.text()), deadline, f"{self.name} logged {pattern.pattern!r}")

    def kill_leader(self) -> None:
        """SIGKILL this process alone, as the kernel's OOM killer would; the children it started live on."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop_group(self) -> None:
        """End the whole process group: SIGTERM, then SIGKILL whatever is still alive after a grace period."""
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return  # the group is empty
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and self._group_alive():
            time.sleep(0.2)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()

    def _group_alive(self) -> bool:
        self.popen.poll()  # reap the leader, so that a finished leader does not count as alive
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        return True


@dataclass
class StandaloneCluster:
    """One master and ``workers`` worker processes, each offering ``cores_per_worker`` cores, on loopback only.

    Ports are chosen by the processes themselves (port 0) and read back from their logs, so no port is ever fixed.
    ``environment`` is what the daemons (and so their executors and Python workers) inherit.
    """

    root: Path
    workers: int
    cores_per_worker: int
    memory_per_worker: str
    environment: Mapping[str, str]
    master: Optional[Process] = None
    worker_processes: list[Process] = field(default_factory=list)
    master_url: str = ""

    @property
    def slots(self) -> int:
        return self.workers * self.cores_per_worker

    def worker_dir(self, index: int) -> Path:
        return self.root / f"worker-{index}"

    def _environment(self) -> dict[str, str]:
        conf_dir = self.root / "daemon-conf"  # empty: the daemons run with Spark's defaults, not the job's settings
        conf_dir.mkdir(parents=True, exist_ok=True)
        return {**self.environment, "SPARK_LOCAL_IP": LOOPBACK, "SPARK_CONF_DIR": str(conf_dir)}

    def start(self, timeout: float = 60) -> None:
        """Start the master, then the workers; returns once the master is up (see :meth:`wait_until_ready`)."""
        deadline = time.monotonic() + timeout
        environment = self._environment()
        spark_class = str(SPARK_BIN / "spark-class")
        self.master = Process.start(
            "master", [spark_class, MASTER_CLASS, "--host", LOOPBACK, "--port", "0", "--webui-port", "0"],
            log=self.root / "master.log", env=environment, cwd=self.root)
        self.master_url = self.master.wait_for(MASTER_URL, deadline).group(1)
        for index in range(self.workers):
            work_dir = self.worker_dir(index)
            (work_dir / "local").mkdir(parents=True)
            self.worker_processes.append(Process.start(
                f"worker-{index}",
                [spark_class, WORKER_CLASS, "--host", LOOPBACK, "--port", "0", "--webui-port", "0",
                 "--cores", str(self.cores_per_worker), "--memory", self.memory_per_worker,
                 "--work-dir", str(work_dir / "work"), self.master_url],
                log=self.root / f"worker-{index}.log", cwd=self.root,
                # Executors get their scratch directories from the worker that starts them.
                env={**environment, "SPARK_LOCAL_DIRS": str(work_dir / "local")}))

    def wait_until_ready(self, timeout: float = 60) -> None:
        """Block until every worker has registered with the master."""
        deadline = time.monotonic() + timeout
        for worker in self.worker_processes:
            worker.wait_for(WORKER_REGISTERED, deadline)

    def executors_of(self, index: int) -> set[str]:
        """Ids of the executors that worker ``index`` launched (it makes ``work/<app id>/<executor id>/`` for each)."""
        work_dir = self.worker_dir(index) / "work"
        return {path.name for path in work_dir.glob("app-*/*") if path.is_dir()}

    def worker_of(self, executor_id: str) -> Optional[int]:
        for index in range(self.workers):
            if executor_id in self.executors_of(index):
                return index
        return None

    def stop(self) -> None:
        for process in reversed([self.master, *self.worker_processes]):
            if process is not None:
                process.stop_group()


def write_spark_conf_dir(conf_dir: Path, configurations: Sequence[Mapping[str, Any]], *,
                         replaced: Mapping[str, str], added: Mapping[str, str],
                         env_replaced: Mapping[str, str]) -> dict[str, str]:
    """Render EMR classifications as EMR does on the primary node: ``spark-defaults`` into ``spark-defaults.conf``,
    ``spark-env``/``export`` into ``spark-env.sh`` (which spark-submit sources); return the properties written.

    The YARN classifications (``YARN_CLASSIFICATIONS``) are left out: a standalone cluster has no YARN. Any other
    classification fails, so a new Spark setting cannot be dropped unnoticed.

    ``replaced`` (and ``env_replaced``) change values the classifications hold; ``added`` sets properties they do not
    hold. Either mismatch fails, so a change to the cluster definition cannot silently turn an override into a no-op
    or let a local value hide a new EMR setting.
    """
    by_name = {configuration["Classification"]: configuration for configuration in configurations}
    unknown = sorted(set(by_name) - SPARK_CLASSIFICATIONS - YARN_CLASSIFICATIONS)
    if unknown:
        raise ClusterError(f"the cluster definition has classifications {unknown} this test does not know how to "
                           f"apply; known: Spark's {sorted(SPARK_CLASSIFICATIONS)}, YARN's (left out) "
                           f"{sorted(YARN_CLASSIFICATIONS)}")
    defaults = dict(by_name["spark-defaults"]["Properties"])
    exports: dict[str, str] = {}
    for child in by_name.get("spark-env", {}).get("Configurations", []):
        if child["Classification"] == "export":
            exports.update(child["Properties"])
    problems = [f"spark-defaults has no {key} to replace" for key in replaced if key not in defaults]
    problems += [f"spark-env export has no {key} to replace" for key in env_replaced if key not in exports]
    problems += [f"spark-defaults already sets {key}={defaults[key]!r}; the local value {value!r} would hide it"
                 for key, value in added.items() if key in defaults]
    if problems:
        raise ClusterError("the cluster definition changed: " + "; ".join(problems))
    defaults.update({**replaced, **added})
    exports.update(env_replaced)
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "spark-defaults.conf").write_text(
        "".join(f"{key} {value}\n" for key, value in sorted(defaults.items())))
    (conf_dir / "spark-env.sh").write_text(
        "".join(f"export {key}={value}\n" for key, value in sorted(exports.items())))
    return defaults


def start_step(step: Mapping[str, Any], *, conf_dir: Path, environment: Mapping[str, str], cwd: Path,
               log: Path) -> Process:
    """Run an EMR command-runner step's arguments as command-runner.jar would: as one command, unchanged.

    pyspark's ``bin`` comes first on PATH, so the step's ``spark-submit`` is the wheel's own (the one EMR uses is on the
    primary node's PATH the same way). ``timeout`` is coreutils', as on EMR.
    """
    args = step["HadoopJarStep"]["Args"]
    env = {**environment, "SPARK_CONF_DIR": str(conf_dir), "SPARK_LOCAL_IP": LOOPBACK,
           "PATH": os.pathsep.join([str(SPARK_BIN), environment.get("PATH", os.defpath)])}
    return Process.start("spark-submit", args, log=log, env=env, cwd=cwd)


@dataclass(frozen=True)
class RunningTask:
    stage: int
    partition: int
    executor: str


def running_tasks(driver_log: str) -> list[RunningTask]:
    """Task attempts the driver launched and has not seen finish, in launch order (from TaskSetManager's log lines)."""
    finished = {match.group(1) for match in TASK_FINISHED.finditer(driver_log)}
    return [RunningTask(stage=int(match.group(3)), partition=int(match.group(7)), executor=match.group(6))
            for match in TASK_STARTED.finditer(driver_log) if match.group(5) not in finished]


def read_event_log(events_dir: Path) -> list[dict]:
    """The one finished application's Spark event log (``spark.eventLog.dir``): one JSON event per line."""
    logs = [path for path in events_dir.iterdir() if not path.name.endswith(".inprogress")]
    if len(logs) != 1:
        raise ClusterError(f"expected one finished event log in {events_dir}, found {sorted(p.name for p in logs)}")
    return [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class KilledWorker:
    index: int
    executor: str  # the executor whose running task showed the job was under way
    partition: int  # that task's partition


def kill_worker_mid_task(cluster: StandaloneCluster, driver: Process, output_dir: Path,
                         timeout: float = 180) -> KilledWorker:
    """SIGKILL the worker JVM that hosts a running task of the job's first stage once that task has opened its Parquet
    output (its ``part-<partition>`` file under the committer's ``_temporary/`` folder), so that the kill lands while
    the task is writing. Only the Worker process is killed: its executors lose their worker as on a failed node.
    """
    def kill_a_writing_worker() -> Optional[KilledWorker]:
        driver_log = driver.text()
        first = TASK_STARTED.search(driver_log)
        for task in running_tasks(driver_log):
            if task.stage != int(first.group(3)):
                continue
            opened = any(output_dir.glob(f"_temporary/*/_temporary/attempt_*/part-{task.partition:05d}-*"))
            index = cluster.worker_of(task.executor) if opened else None
            if index is not None:
                cluster.worker_processes[index].kill_leader()
                return KilledWorker(index=index, executor=task.executor, partition=task.partition)
        return None

    return driver.wait_until(kill_a_writing_worker, time.monotonic() + timeout,
                             f"a running task of the first stage to open its output under {output_dir}")
