"""`tokensense serve --workers N`: N gateway processes on one port, supervised by this one.

The supervisor
- prepares the database once (migrations) and starts the hub (`hub.py`): the
  rate-limit and budget counters every worker shares, and the one writer of
  every worker's usage records;
- binds the listening socket once and hands it to each worker (`inherit`, the
  default): the kernel queues new connections on that one socket and whichever
  worker is free takes the next, and a worker that dies leaves the queued
  connections to the others. `TOKENSENSE_WORKERS_SOCKET=reuseport` instead has
  each worker bind its own socket with SO_REUSEPORT (the kernel spreads the
  connections by a hash of their addresses); docs/benchmark.md compares them;
- restarts a worker that exits (logged, with a growing pause if it keeps
  failing), and stops the workers together: SIGTERM or SIGINT is passed on as
  SIGTERM, each worker finishes its calls, and one still running after
  `--drain-timeout` seconds is killed.

The workers are `mitmdump` processes like a single `tokensense serve`; mitmproxy 12
listens with `asyncio.start_server(handler, host, port)`, which takes neither a
socket nor `reuse_port`, so a worker replaces that one method
(`AsyncioServerInstance.listen`) for TCP listeners on the shared ports only,
after checking the mitmproxy version it was written for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tokensense.workers")

LISTEN_FDS_ENV = "TOKENSENSE_LISTEN_FDS"  # "PORT=FD,PORT=FD": listening sockets the supervisor bound
REUSE_PORT_ENV = "TOKENSENSE_REUSE_PORT"  # "1": bind each listener with SO_REUSEPORT
WORKER_ENV = "TOKENSENSE_WORKER"  # the worker's number, from 1
SHARE_ENV = "TOKENSENSE_WORKERS_SOCKET"  # "inherit" (default) or "reuseport"
ACCEPT_BATCH_ENV = "TOKENSENSE_ACCEPT_BATCH"  # connections a worker accepts per wake-up (default 4)
LISTEN_BACKLOG = 4096  # asyncio's default of 100 drops connections when hundreds of streams open at once
# Connections a worker accepts from the shared socket per wake-up. asyncio accepts up to its `backlog` at once, so
# with 4096 the first worker to wake took every connection of a burst (wrk's 16 keep-alive connections all went to
# one worker, and `--workers 2` served no more than one). A small batch leaves the next ones to the other workers.
ACCEPT_BATCH_DEFAULT = 4
SUPPORTED_MITMPROXY = "12."
RESTART_PAUSE_MAX = 10.0
START_FAILURES_FATAL = 3  # a worker that fails this many times in a row before it ever served: give up


def accept_batch(text: str | None) -> int:
    """`TOKENSENSE_ACCEPT_BATCH`: a positive number; anything else is the default."""
    try:
        return max(int(text or ACCEPT_BATCH_DEFAULT), 1)
    except ValueError:
        return ACCEPT_BATCH_DEFAULT


def worker_count(text: str) -> int:
    """`--workers`: a positive number, or `auto` for the number of cores this process may use."""
    if text == "auto":
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or `auto`, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 worker, got {value}")
    return value


# -- in each worker ---------------------------------------------------------------------------------


def patch_mitmproxy_listen(listen_fds: dict[int, int], reuse_port: bool) -> None:
    """Make mitmproxy's TCP listeners on the shared ports use the supervisor's socket (or SO_REUSEPORT)."""
    from mitmproxy.proxy import mode_servers
    from mitmproxy.version import VERSION

    if not VERSION.startswith(SUPPORTED_MITMPROXY):
        raise RuntimeError(f"`serve --workers` supports mitmproxy {SUPPORTED_MITMPROXY}x, not {VERSION}")
    original = mode_servers.AsyncioServerInstance.listen

    async def listen(self, host: str, port: int):
        if self.mode.transport_protocol != "tcp":
            return await original(self, host, port)
        handler = self.handle_stream
        fd = listen_fds.get(port)
        if fd is not None:
            sock = socket.socket(fileno=os.dup(fd))
            # asyncio's `backlog` is both listen()'s queue and how many connections one wake-up accepts: the server
            # accepts a few (accept_batch) at a time, and the shared socket's queue is set back to LISTEN_BACKLOG at once.
            server = await asyncio.start_server(handler, sock=sock,
                                                backlog=accept_batch(os.environ.get(ACCEPT_BATCH_ENV)))
            sock.listen(LISTEN_BACKLOG)
            return [server]
        if reuse_port:
            return [await asyncio.start_server(handler, host or None, port, reuse_port=True, backlog=LISTEN_BACKLOG)]
        return await original(self, host, port)

    mode_servers.AsyncioServerInstance.listen = listen  # type: ignore[method-assign]


def worker_main(argv: list[str]) -> int:
    """Entry point of a worker process: `python -m tokensense.serve.workers '<serve arguments as JSON>'`."""
    args = argparse.Namespace(**json.loads(argv[0]))
    fds = {int(port): int(fd) for port, fd in
           (item.split("=") for item in os.environ.get(LISTEN_FDS_ENV, "").split(",") if item)}
    patch_mitmproxy_listen(fds, os.environ.get(REUSE_PORT_ENV) == "1")
    from tokensense.serve.server import run_server

    return run_server(args) or 0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, however it dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- the supervisor ----------------------------------------------------------------------------------


@dataclass
class Worker:
    number: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0  # exits in a row soon after starting
    restarts: int = 0


@dataclass
class Supervisor:
    args: argparse.Namespace
    count: int
    drain_timeout: float = 30.0
    share: str = "inherit"
    workers: list[Worker] = field(default_factory=list)
    exit_code: int = 0

    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return asyncio.run(self._main())

    def ports(self) -> list[int]:
        ports = [self.args.port]
        if getattr(self.args, "intercept", False):
            from tokensense.gateway.intercept import intercept_port

            ports.append(intercept_port(self.args))
        return ports

    async def _main(self) -> int:
        from tokensense.gateway.hub import Hub
        from tokensense.settings import get_settings
        from tokensense.storage.db import init_db, make_engine

        settings = get_settings()
        engine = make_engine(settings.effective_database_url)
        await asyncio.to_thread(init_db, engine)  # once, before the workers start
        run_dir = settings.home / "run"
        hub_path = run_dir / f"hub-{os.getpid()}-{secrets.token_hex(4)}.sock"
        if len(str(hub_path)) > 100:  # a Unix socket path has at most 107 bytes
            import tempfile

            hub_path = Path(tempfile.mkdtemp(prefix="tokensense-")) / "hub.sock"
        sockets = self._bind() if self.share == "inherit" else []  # first: a port in use stops us here
        hub = Hub(hub_path, engine, flush_interval=settings.flush_interval, settings=settings)
        await hub.start()
        env = {**os.environ, "TOKENSENSE_HUB_SOCKET": str(hub_path)}
        if sockets:
            env[LISTEN_FDS_ENV] = ",".join(f"{port}={s.fileno()}" for port, s in sockets)
        else:
            env[REUSE_PORT_ENV] = "1"
        self._env = env
        self._fds = [s.fileno() for _, s in sockets]
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)

        print(f"TokenSense gateway on http://{self.args.host}:{self.args.port} with {self.count} workers "
              f"(home: {settings.home}; sharing the port: {self.share}); Ctrl+C stops it.", flush=True)
        self.workers = [Worker(i + 1) for i in range(self.count)]
        watchers = [loop.create_task(self._watch(w)) for w in self.workers]
        await self._stopping.wait()
        log.info("stopping %d workers (waiting up to %.0f s for their calls)", self.count, self.drain_timeout)
        await self._stop_workers()
        for watcher in watchers:
            watcher.cancel()
        for _, s in sockets:
            s.close()
        await hub.close()
        engine.dispose()
        log.info("stopped; %d usage records written", hub.records)
        return self.exit_code

    def _bind(self) -> list[tuple[int, socket.socket]]:
        host = self.args.host
        out = []
        for port in self.ports():
            if host in ("", "::") and socket.has_dualstack_ipv6():
                sock = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True,
                                            backlog=LISTEN_BACKLOG)
            else:
                family = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM)[0][0]
                sock = socket.create_server((host or "0.0.0.0", port), family=family, backlog=LISTEN_BACKLOG)
            sock.set_inheritable(True)
            out.append((port, sock))
        return out

    async def _spawn(self, worker: Worker) -> None:
        env = {**self._env, WORKER_ENV: str(worker.number)}
        serve_args = {k: v for k, v in vars(self.args).items() if _plain(v)}
        serve_args["workers"] = 1
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tokensense.serve.workers", json.dumps(serve_args),
            env=env, pass_fds=self._fds, stdin=asyncio.subprocess.DEVNULL,
            process_group=0,  # Ctrl+C reaches the supervisor only; it stops the workers in order
            preexec_fn=_die_with_parent,
        )
        worker.started = time.monotonic()
        log.info("worker %d started (pid %d)", worker.number, worker.process.pid)

    async def _watch(self, worker: Worker) -> None:
        """Start the worker, and start it again whenever it exits while the supervisor runs."""
        while not self._stopping.is_set():
            await self._spawn(worker)
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping.is_set():
                return
            quick = time.monotonic() - worker.started < 5
            worker.failures = worker.failures + 1 if quick else 0
            worker.restarts += 1
            how = f"signal {-code}" if code < 0 else f"status {code}"
            now = time.monotonic()
            healthy = any(w.process is not None and w.process.returncode is None and now - w.started > 5
                          for w in self.workers if w is not worker)
            if worker.failures >= START_FAILURES_FATAL and not healthy:  # e.g. a broken configuration
                log.error("worker %d (pid %d) exited with %s %d times in a row right after starting; stopping",
                          worker.number, worker.process.pid, how, worker.failures)
                self.exit_code = 1
                self._stopping.set()
                return
            pause = min(0.5 * 2 ** (worker.failures - 1), RESTART_PAUSE_MAX) if worker.failures else 0.0
            log.warning("worker %d (pid %d) exited with %s; starting a new one%s", worker.number,
                        worker.process.pid, how, f" in {pause:.1f} s" if pause else "")
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)

    async def _stop_workers(self) -> None:
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not running:
            return
        _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=self.drain_timeout)
        if late:
            log.warning("%d workers still running after %.0f s; killing them", len(late), self.drain_timeout)
            for process in running:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(p.wait() for p in running))


def _plain(value: object) -> bool:
    """Whether an argument value goes through JSON unchanged (not the handler function)."""
    return value is None or isinstance(value, (str, int, float, bool)) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value))


def run_supervisor(args: argparse.Namespace) -> int:
    """`tokensense serve --workers N` with N > 1."""
    if getattr(args, "record", None):
        print("error: --record saves one process's flows; use it with --workers 1", file=sys.stderr)
        return 2
    share = os.environ.get(SHARE_ENV, "inherit")
    if share not in ("inherit", "reuseport"):
        print(f"error: {SHARE_ENV} must be `inherit` or `reuseport`, not {share!r}", file=sys.stderr)
        return 2
    supervisor = Supervisor(args, args.workers, drain_timeout=getattr(args, "drain_timeout", 30.0), share=share)
    try:
        return supervisor.run()
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
