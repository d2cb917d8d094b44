"""A PostgreSQL server of a test's own, on a free port, that the test may stop and start (never the machine's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgres:
    """initdb into a temporary folder, run as the `postgres` user (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
            raise RuntimeError("PostgreSQL 15 binaries or runuser are missing")
        self.dir = Path(tempfile.mkdtemp(prefix="ts-pg-"))
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
                          "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(predicate, timeout: float = 60.0, step: float = 0.1) -> bool:
    """Poll `predicate` until it is true (a guard against hangs, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class OwnRedis:
    """A redis-server of a test's own on a fixed free port, killed and restarted by the test (never the machine's).

    Snapshots go to its own folder: `save()` writes one, and `start(from_snapshot=True)` restarts from it (a Redis
    brought back with old data); `start()` alone starts empty.
    """

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="ts-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self, *, from_snapshot: bool = False) -> None:
        dump = self.dir / "dump.rdb"
        dump.unlink(missing_ok=True)
        if from_snapshot:
            shutil.copyfile(self.dir / "snapshot.rdb", dump)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            try:
                return bool(self.client().ping())
            except Exception:
                return False

        if not wait_until(answers, timeout=20, step=0.05):
            raise RuntimeError("redis-server did not start")

    def save(self) -> None:
        """Take a snapshot now (kept aside for `start(from_snapshot=True)`)."""
        self.client().save()
        shutil.copyfile(self.dir / "dump.rdb", self.dir / "snapshot.rdb")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
