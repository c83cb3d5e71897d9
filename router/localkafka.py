"""A real single-node Apache Kafka broker (KRaft) for the local run and the tests, without Docker.

The broker comes from Apache Kafka's own artifacts on Maven Central: a tiny generated pom plus
``maven-dependency-plugin:copy-dependencies`` fills ``.kafka/<version>/lib`` once (cached; a second
run downloads nothing). Each start formats a fresh KRaft store in a new directory, picks free
loopback ports, waits until an admin ``describe_cluster`` answers, and stops the broker by pid.

``python -m router.localkafka`` (what ``make kafka`` calls) starts one and keeps it running until
Ctrl-C. ``SAMEX_KAFKA_BOOTSTRAP`` makes callers use an existing broker instead (see
:func:`broker_from_env`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from router.errors import SamexError

#: The one place the Kafka version is set. ``SAMEX_KAFKA_VERSION`` overrides it (e.g. 4.1.0).
KAFKA_VERSION = "3.9.2"
SCALA_VERSION = "2.13"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = REPO_ROOT / ".kafka"


# The JVM options Kafka's own kafka-server-start.sh uses (KAFKA_JVM_PERFORMANCE_OPTS): G1 with a
# 20 ms pause goal instead of the JVM's default 200 ms, which shows directly in produce latency.
JVM_PERFORMANCE_OPTS = ("-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                        "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent")


class LocalKafkaError(SamexError):
    """The local broker could not be resolved or started; the message carries the log tail."""


def kafka_version() -> str:
    return os.environ.get("SAMEX_KAFKA_VERSION", KAFKA_VERSION)


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])


def _logging_deps(version: str) -> list[tuple[str, str, str]]:
    if _major(version) >= 4:
        return [
            ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.24.3"),
            ("org.apache.logging.log4j", "log4j-core", "2.24.3"),
        ]
    return [("org.slf4j", "slf4j-reload4j", "1.7.36"), ("ch.qos.reload4j", "reload4j", "1.2.25")]


def _pom(version: str) -> str:
    deps = [("org.apache.kafka", f"kafka_{SCALA_VERSION}", version), *_logging_deps(version)]
    body = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>samex.local</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{body}
  </dependencies>
</project>
"""


def resolve_jars(home: Path = DEFAULT_HOME, version: str | None = None, quiet: bool = False) -> Path:
    """Return the lib folder for ``version``, downloading it from Maven Central once."""
    version = version or kafka_version()
    vdir = home / version
    lib = vdir / "lib"
    marker = vdir / ".complete"
    vdir.mkdir(parents=True, exist_ok=True)
    with open(vdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and any(lib.glob("kafka_*.jar")):
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError("Maven (mvn) is not on PATH; it is needed once to fetch Kafka jars")
        (vdir / "pom.xml").write_text(_pom(version))
        tmp = vdir / "lib.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        if not quiet:
            print(f"samex: resolving Apache Kafka {version} from Maven Central…", file=sys.stderr)
        cmd = [
            mvn, "-B", "-q", "-f", str(vdir / "pom.xml"),
            "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not any(tmp.glob("kafka_*.jar")):
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise LocalKafkaError(f"mvn could not resolve Kafka {version}:\n{tail}")
        shutil.rmtree(lib, ignore_errors=True)
        tmp.rename(lib)
        marker.write_text(version + "\n")
        return lib


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_properties(data_dir: Path, port: int, cport: int, partitions: int) -> str:
    return f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir / "data"}
num.partitions={partitions}
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
log.segment.bytes=67108864
num.network.threads=3
num.io.threads=4
"""


_LOG4J = """log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
"""

_LOG4J2 = """Configuration:
  Appenders:
    File:
      name: file
      fileName: "{log}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        ref: file
"""


@dataclass
class LocalKafka:
    """One broker process. Use as a context manager or call :meth:`start` / :meth:`stop`."""

    home: Path = DEFAULT_HOME
    version: str = field(default_factory=kafka_version)
    heap: str = field(default_factory=lambda: os.environ.get("SAMEX_KAFKA_HEAP", "512m"))
    partitions: int = 6
    start_timeout: float = 60.0
    runs_dir: Path | None = None  # where the broker's work directory (its log) goes; home/runs by default
    workdir: Path | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "broker.log"

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for name in ("broker.log", "stdout.log"):
            path = (self.workdir or Path("/nonexistent")) / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out) or "(no broker log was written)"

    def start(self) -> LocalKafka:
        lib = resolve_jars(self.home, self.version)
        last: LocalKafkaError | None = None
        for _attempt in range(2):  # a loaded machine sometimes loses the first start
            try:
                self._start_once(lib)
                return self
            except LocalKafkaError as exc:
                last = exc
                self.stop(keep_logs=True)
        assert last is not None
        raise last

    def _start_once(self, lib: Path) -> None:
        runs = self.runs_dir or self.home / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="broker-", dir=runs))
        self.port, cport = free_port(), free_port()
        while cport == self.port:
            cport = free_port()
        props = self.workdir / "server.properties"
        props.write_text(_server_properties(self.workdir, self.port, cport, self.partitions))
        classpath = f"{lib}/*"
        if _major(self.version) >= 4:
            logcfg = self.workdir / "log4j2.yaml"
            logcfg.write_text(_LOG4J2.format(log=self.log_path))
            logflag = f"-Dlog4j2.configurationFile={logcfg}"
        else:
            logcfg = self.workdir / "log4j.properties"
            logcfg.write_text(_LOG4J.format(log=self.log_path))
            logflag = f"-Dlog4j.configuration=file:{logcfg}"
        java = shutil.which("java")
        if java is None:
            raise LocalKafkaError("java is not on PATH (Java 17 is needed for the broker)")
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            [java, logflag, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", cluster_id, "-c", str(props), "--ignore-formatted"],
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise LocalKafkaError(
                f"kafka StorageTool format failed ({fmt.returncode}):\n{fmt.stdout}{fmt.stderr}"
                f"\n{self.log_tail()}"
            )
        stdout = open(self.workdir / "stdout.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [java, f"-Xms{self.heap}", f"-Xmx{self.heap}", *JVM_PERFORMANCE_OPTS,
             f"-Xlog:gc:file={self.workdir / 'gc.log'}:time,uptime:filecount=2,filesize=20M",
             "-Djava.awt.headless=true", logflag, "-cp", classpath, "kafka.Kafka", str(props)],
            stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        stdout.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LocalKafkaError(
                    f"broker exited with {self.proc.returncode} during start\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            if asyncio.run(_describe_cluster(self.bootstrap)):
                return
            time.sleep(0.2)
        raise LocalKafkaError(
            f"broker did not become ready within {self.start_timeout:.0f}s\n{self.log_tail()}"
        )

    def stop(self, keep_logs: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.workdir is not None and not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _describe_cluster(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        info = await admin.describe_cluster()
        return bool(info.get("brokers"))
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def broker_from_env() -> str | None:
    """The bootstrap address of an existing broker, if ``SAMEX_KAFKA_BOOTSTRAP`` names one."""
    value = os.environ.get("SAMEX_KAFKA_BOOTSTRAP", "").strip()
    return value or None


@contextlib.contextmanager
def kafka_broker(runs_dir: Path | None = None) -> Iterator[str]:
    """Yield a bootstrap address: the one in ``SAMEX_KAFKA_BOOTSTRAP``, or a fresh local broker
    (with its log under ``runs_dir`` when given)."""
    existing = broker_from_env()
    if existing:
        yield existing
        return
    with LocalKafka(runs_dir=runs_dir) as broker:
        yield broker.bootstrap


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--resolve-only" in args:
        try:
            lib = resolve_jars()
        except LocalKafkaError as exc:
            print(f"samex: {exc}", file=sys.stderr)
            return 1
        print(f"Kafka {kafka_version()} jars ready in {lib}")
        return 0
    existing = broker_from_env()
    if existing:
        print(f"SAMEX_KAFKA_BOOTSTRAP is set; using the existing broker at {existing}")
        return 0
    broker = LocalKafka()
    stop = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        broker.start()
    except LocalKafkaError as exc:
        print(f"samex: the broker did not start: {exc}", file=sys.stderr)
        return 1
    try:
        assert broker.proc is not None
        print(f"Kafka {broker.version} (KRaft) listening on {broker.bootstrap}", flush=True)
        print(f"  pid {broker.proc.pid}, data in {broker.workdir}; Ctrl-C stops it", flush=True)
        print(f"  export SAMEX_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
        while not stop and broker.proc.poll() is None:
            time.sleep(0.3)
        if broker.proc.poll() is not None and not stop:
            print(f"broker exited unexpectedly\n{broker.log_tail()}", file=sys.stderr)
            return 1
    finally:
        broker.stop()
        print("broker stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
