"""Benchmark TokenSense side by side with a bare mitmdump and the upstream itself, in one run.

    scripts/bench                        # full run (about 5 minutes): table on screen, bench-results.json
    scripts/bench --quick                # smoke run (about 20 seconds)
    scripts/bench --workers 2            # the workers lane with `serve --workers 2` (default: auto, one per core)
    scripts/bench --compare-sharing      # also `serve --workers` with SO_REUSEPORT, and nginx in front of 2 `serve`
    scripts/bench --out results.json --rounds 5 --duration 6
    scripts/bench --tokensense-src ../old-checkout   # TokenSense from another tree: before/after

docs/benchmark.md explains the figures and has the latest results.

What runs, all on 127.0.0.1:

- the upstream: nginx (Debian's `nginx-light`) answering every POST with one fixed
  chat completion, or the project's fake provider where nginx is not installed;
- `direct`: the load generator against that upstream (the ceiling of the setup);
- `bare`: a plain `mitmdump` reverse proxy to it (the floor TokenSense is built on);
- `tokensense`: `tokensense serve` with a key, the upstream as its OpenAI base URL.

Rounds interleave the lanes (direct, bare, tokensense at each concurrency, the order
reversed every other round), so a noisy neighbour hits all of them alike; the figures
are medians over rounds, and each TokenSense/bare ratio is taken within a round.
The load generator is wrk (Debian's `wrk`) where installed, else a bounded asyncio
client (keep-alive connections, one request in flight per connection).

Streaming: 64 chunks 20 ms apart from the fake provider, read directly, through a bare
mitmdump that streams, and through TokenSense (as an xAI model, whose base URL points
at the fake); time to first token, gaps between chunks, and whether every chunk
arrived and none was held back.
Memory: RSS of the TokenSense process before and after 10,000 more requests.
Workers: `tokensense serve --workers N` (one port) in the same rounds as TokenSense with one process.
Concurrency: N (500) long streams opened at once, directly, through bare mitmdump, TokenSense with one
worker and with N workers: time to first token p50/p99, largest gap between chunks, errors, peak RSS.
CPU: CPU time of each proxy process per request, steadier than req/s on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

CHAT_PATH = "/v1/chat/completions"
CHAT_MODEL = "gpt-4o-mini"
STREAM_MODEL = "grok-3-mini"  # xAI: TokenSense's xAI base URL points at the fake provider
REQUEST_BODY = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hello"}]},
                          separators=(",", ":"))
# What nginx answers: the fake provider's own answer to REQUEST_BODY, fixed.
CHAT_ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": CHAT_MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from gpt-4o-mini.", "refusal": None,
                                         "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_bench"}, separators=(",", ":"))

TARGETS = {
    "throughput_c16_ratio": 0.85,
    "added_p50_c1_ms": 0.3,
    "stream_added_ttft_ms": 2.0,
    "rss_growth_mb_per_10k": 10.0,
    "workers_scaling_c16": 1.5,
    "concurrency_ttft_p99_over_bare": 1.2,
}


# -- configuration -------------------------------------------------------------------------------


@dataclass
class Plan:
    rounds: int
    duration: float  # seconds per lane and round (wrk rounds up to whole seconds)
    concurrency: list[int]
    warmup: float  # seconds of load per target before the rounds
    memory_requests: int
    stream_rounds: int
    streams: int  # concurrent streams per lane and round
    chunks: int
    chunk_delay_ms: int
    workers: int  # `serve --workers N` lane (1: none)
    nginx_workers: int  # nginx in front of 1 and of N single-process `serve` (1: none)
    compare_sharing: bool  # also a `serve --workers N` lane with SO_REUSEPORT
    concurrent_streams: int  # concurrency lane: streams open at once (0: none)
    concurrent_chunks: int
    concurrent_rounds: int
    client: str  # "wrk" or "asyncio"
    upstream: str  # "nginx" or "fake"
    tokensense_src: str | None = None
    serve_args: list[str] = field(default_factory=list)  # extra `tokensense serve` arguments (--serve-arg)
    otlp: bool = False  # OpenTelemetry spans exported to the upstream, which accepts any POST (--otlp)


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "asyncio"
    elif client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("error: --client wrk, but wrk is not installed (apt-get install -y wrk).")
    upstream = args.upstream
    if upstream == "auto":
        upstream = "nginx" if nginx_binary() else "fake"
    elif upstream == "nginx" and not nginx_binary():
        raise SystemExit("error: --upstream nginx, but nginx is not installed (apt-get install -y nginx-light).")
    nginx_workers = args.nginx_workers or (args.workers_n if args.compare_sharing else 1)
    if nginx_workers > 1 and not nginx_binary():
        raise SystemExit("error: --nginx-workers needs nginx as the load balancer (apt-get install -y nginx-light).")
    return Plan(
        rounds=args.rounds or (1 if quick else 3),
        duration=args.duration or (1 if quick else 4),
        concurrency=[int(c) for c in args.concurrency.split(",")],
        warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
        memory_requests=args.memory_requests if args.memory_requests is not None else (300 if quick else 10_000),
        stream_rounds=1 if quick else 3,
        streams=2 if quick else 8,
        chunks=args.chunks or (8 if quick else 64),
        chunk_delay_ms=20,
        workers=args.workers_n,
        nginx_workers=nginx_workers,
        compare_sharing=args.compare_sharing,
        concurrent_streams=(args.streams if args.streams is not None else (20 if quick else 500)),
        concurrent_chunks=args.stream_chunks or (8 if quick else 40),
        concurrent_rounds=args.stream_rounds or (1 if quick else 2),
        client=client,
        upstream=upstream,
        tokensense_src=str(Path(args.tokensense_src).resolve()) if args.tokensense_src else None,
        serve_args=[a.replace("{free_port}", str(free_port())) for a in args.serve_arg],
        otlp=args.otlp,
    )


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"error: {what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def wait_http(url: str, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"error: {what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


class Processes:
    """The child processes of one run; all stopped (by pid) when the run ends."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        log = self.tmp / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=self.tmp)
        self.procs.append((name, proc))
        return proc, log

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def clean_env() -> dict[str, str]:
    """The environment without TokenSense settings or real provider keys."""
    drop = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "XAI_API_KEY", "MISTRAL_API_KEY", "FAL_KEY"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENSENSE_", "OTEL_")) and k not in drop}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def nginx_config(tmp: Path, upstream_port: int | None, lb: dict[int, list[int]]) -> str:
    """nginx as the fixed-answer upstream (`upstream_port`) and as load balancer (`lb`: port -> workers)."""
    assert "'" not in CHAT_ANSWER and "\\" not in CHAT_ANSWER
    servers = []
    if upstream_port:
        servers.append(f"""
  server {{
    listen 127.0.0.1:{upstream_port};
    location / {{
      default_type application/json;
      return 200 '{CHAT_ANSWER}';
    }}
  }}""")
    for port, workers in lb.items():
        members = " ".join(f"server 127.0.0.1:{w};" for w in workers)
        servers.append(f"""
  upstream tokensense_{port} {{ {members} keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://tokensense_{port};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 600s;
    }}
  }}""")
    temp = tmp / "nginx"
    return f"""
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  client_body_temp_path {temp}/body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;
{"".join(servers)}
}}
"""


@dataclass
class Setup:
    upstream: str  # description for the report
    direct_url: str
    bare_url: str
    tokensense_url: str
    fake_url: str
    bare_stream_url: str
    key: str
    tokensense_pid: int
    bare_pid: int
    bare_stream_pid: int = 0
    fake_pid: int = 0
    multi: dict[str, tuple[str, int]] = field(default_factory=dict)  # lane -> (URL, supervisor pid)
    worker_pids: list[int] = field(default_factory=list)
    lb_urls: dict[int, str] = field(default_factory=dict)  # workers behind nginx -> URL


def start_services(plan: Plan, procs: Processes) -> Setup:
    tmp = procs.tmp
    env = clean_env()

    fake, fake_log = procs.start("fake-provider", [sys.executable, "-m", "tokensense.demo.fakeprovider",
                                                   "--host", "127.0.0.1", "--port", "0"], env)
    deadline = time.monotonic() + 30
    while "listening on" not in fake_log.read_text() and fake.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    match = re.search(r"listening on (\S+)", fake_log.read_text())
    if not match:
        raise SystemExit(f"error: the fake provider did not start:\n{fake_log.read_text()}")
    fake_url = match[1]

    # TokenSense workers share one home (one SQLite file in WAL mode, one key).
    home = tmp / "home"
    ts_env = {**env, "TOKENSENSE_HOME": str(home), "OPENAI_API_KEY": "sk-bench-openai", "XAI_API_KEY": "xai-bench",
              "TOKENSENSE_XAI_BASE_URL": fake_url}
    if plan.tokensense_src:  # another source tree (an older checkout) for a before/after comparison
        ts_env["PYTHONPATH"] = os.pathsep.join(filter(None, [plan.tokensense_src, env.get("PYTHONPATH")]))
    nginx_port = free_port() if plan.upstream == "nginx" else None
    upstream_url = f"http://127.0.0.1:{nginx_port}" if nginx_port else fake_url
    ts_env["TOKENSENSE_OPENAI_BASE_URL"] = upstream_url
    if plan.otlp:  # spans in batches to nginx, which answers 200 to any POST (/v1/traces included)
        ts_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = upstream_url
    created = subprocess.run([str(BIN / "tokensense"), "keys", "create", "bench", "--json"], env=ts_env,
                             capture_output=True, text=True, timeout=120)
    if created.returncode != 0:
        raise SystemExit(f"error: tokensense keys create failed:\n{created.stderr}")
    key = json.loads(created.stdout)["key"]

    worker_ports = [free_port() for _ in range(max(plan.nginx_workers, 1))]
    lb: dict[int, list[int]] = {}
    if plan.nginx_workers > 1:
        lb = {free_port(): worker_ports[:1], free_port(): worker_ports}
    nginx_desc = None
    if nginx_port or lb:
        (tmp / "nginx").mkdir()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_config(tmp, nginx_port, lb))
        binary = nginx_binary()
        assert binary
        nginx, nginx_log = procs.start("nginx", [binary, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")])
        for port in [p for p in (nginx_port, *lb) if p]:
            wait_port(port, nginx, "nginx", nginx_log)
        version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
        nginx_desc = version.removeprefix("nginx version: ")

    bare_port = free_port()
    bare, bare_log = procs.start("mitmdump-bare", [
        str(BIN / "mitmdump"), "--mode", f"reverse:{upstream_url}@{bare_port}", "--listen-host", "127.0.0.1",
        "--set", "connection_strategy=lazy", "--set", "flow_detail=0"], env)

    # For the streaming lane: a bare mitmdump in front of the fake provider, streaming every body.
    bare_stream_port = free_port()
    bare_stream, bare_stream_log = procs.start("mitmdump-bare-stream", [
        str(BIN / "mitmdump"), "--mode", f"reverse:{fake_url}@{bare_stream_port}", "--listen-host", "127.0.0.1",
        "--set", "connection_strategy=lazy", "--set", "flow_detail=0", "--set", "stream_large_bodies=1"], env)

    workers = []
    for i, port in enumerate(worker_ports):
        proc, log = procs.start(f"tokensense-{i + 1}", [str(BIN / "tokensense"), "serve", "--port", str(port),
                                                     *plan.serve_args], ts_env)
        workers.append((proc, log, port))
    # `tokensense serve --workers N` on one port: the shared listening socket, and SO_REUSEPORT to compare.
    multi_starts = []
    if plan.workers > 1:
        sharings = ["inherit", "reuseport"] if plan.compare_sharing else ["inherit"]
        for sharing in sharings:
            port = free_port()
            lane = f"ts-{plan.workers}w" + ("" if sharing == "inherit" else "-reuseport")
            proc, log = procs.start(lane, [str(BIN / "tokensense"), "serve", "--port", str(port), "--workers",
                                           str(plan.workers)], {**ts_env, "TOKENSENSE_WORKERS_SOCKET": sharing})
            multi_starts.append((lane, proc, log, port))
    wait_port(bare_port, bare, "mitmdump", bare_log)
    wait_port(bare_stream_port, bare_stream, "mitmdump", bare_stream_log)
    for proc, log, port in workers:
        wait_http(f"http://127.0.0.1:{port}/health", proc, "tokensense serve", log)
    multi = {}
    for lane, proc, log, port in multi_starts:
        wait_http(f"http://127.0.0.1:{port}/health", proc, "tokensense serve --workers", log)
        deadline = time.monotonic() + 60  # every worker up, not only the first
        while log.read_text(errors="replace").count("gateway ready") < plan.workers:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"error: {lane} did not start its workers:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        multi[lane] = (f"http://127.0.0.1:{port}{CHAT_PATH}", proc.pid)

    return Setup(
        upstream=(f"nginx ({nginx_desc}), fixed answer" if nginx_port else "the fake provider (nginx not installed)"),
        direct_url=upstream_url + CHAT_PATH,
        bare_url=f"http://127.0.0.1:{bare_port}{CHAT_PATH}",
        tokensense_url=f"http://127.0.0.1:{worker_ports[0]}{CHAT_PATH}",
        fake_url=fake_url,
        bare_stream_url=f"http://127.0.0.1:{bare_stream_port}{CHAT_PATH}",
        key=key,
        tokensense_pid=workers[0][0].pid,
        bare_pid=bare.pid,
        bare_stream_pid=bare_stream.pid,
        fake_pid=fake.pid,
        multi=multi,
        worker_pids=[w[0].pid for w in workers],
        lb_urls={len(members): f"http://127.0.0.1:{port}{CHAT_PATH}" for port, members in lb.items()},
    )


# -- load ----------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    errors: int  # failed requests and non-2xx answers
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
if limit > 0 then
  local count = 0
  response = function(status, headers, body)
    count = count + 1
    if count >= limit then wrk.thread:stop() end
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %f}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99),
    latency.mean))
end
"""


class Load:
    """Closed-loop load: `concurrency` keep-alive connections, each sending the next request on an answer."""

    def __init__(self, client: str, tmp: Path, key: str) -> None:
        self.client = client
        self.key = key
        self.script = tmp / "bench.lua"
        self.script.write_text(WRK_SCRIPT)

    def describe(self) -> str:
        if self.client == "wrk":
            out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
            first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "wrk"
            return first.split(" Copyright")[0].strip() + " (1 thread)"
        return "asyncio client (raw sockets, keep-alive)"

    def run(self, url: str, concurrency: int, *, seconds: float = 0, requests: int = 0) -> LoadResult:
        if self.client == "wrk":
            return self._wrk(url, concurrency, seconds, requests)
        return asyncio.run(_asyncio_load(url, concurrency, self.key, seconds=seconds, requests=requests))

    def _wrk(self, url: str, concurrency: int, seconds: float, requests: int) -> LoadResult:
        # wrk counts in whole seconds; with a request limit the duration is only a safety net.
        duration = max(1, math.ceil(seconds)) if not requests else max(60, requests // 50)
        env = {**os.environ, "BENCH_BODY": REQUEST_BODY, "BENCH_KEY": self.key, "BENCH_LIMIT": str(requests)}
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "30s", "--latency",
                              "-s", str(self.script), url], capture_output=True, text=True, env=env)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if line is None:
            raise SystemExit(f"error: wrk failed:\n{out.stdout}\n{out.stderr}")
        data = json.loads(line[6:])
        secs = data["duration_us"] / 1e6
        return LoadResult(requests=data["requests"], errors=data["errors"] + data["status_errors"], seconds=secs,
                          rps=data["requests"] / secs if secs else 0.0, p50_ms=data["p50_us"] / 1000,
                          p99_ms=data["p99_us"] / 1000, mean_ms=data["mean_us"] / 1000)


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked); its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
    if m:
        await reader.readexactly(int(m[1]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


def _request_bytes(url: str, key: str, body: str, extra: dict[str, str] | None = None) -> tuple[str, int, bytes]:
    parsed = urllib.parse.urlsplit(url)
    headers = {"Host": parsed.netloc, "Content-Type": "application/json", "Authorization": f"Bearer {key}",
               "Content-Length": str(len(body.encode())), **(extra or {})}
    head = f"POST {parsed.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return parsed.hostname or "127.0.0.1", parsed.port or 80, head.encode() + body.encode()


async def _asyncio_load(url: str, concurrency: int, key: str, *, seconds: float, requests: int,
                        body: str = REQUEST_BODY, headers: dict[str, str] | None = None) -> LoadResult:
    host, port, raw = _request_bytes(url, key, body, headers)
    latencies: list[float] = []
    errors = 0
    remaining = requests
    start = time.perf_counter()
    stop_at = start + seconds if seconds else float("inf")

    async def connection() -> None:
        nonlocal errors, remaining
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop_at and (not requests or remaining > 0):
                remaining -= 1
                t0 = time.perf_counter()
                writer.write(raw)
                try:
                    status = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                latencies.append(time.perf_counter() - t0)
                if status >= 300:
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p / 100 * n))] * 1000 if n else 0.0

    return LoadResult(requests=n, errors=errors, seconds=elapsed, rps=n / elapsed if elapsed else 0.0,
                      p50_ms=pct(50), p99_ms=pct(99), mean_ms=(sum(latencies) / n * 1000) if n else 0.0)


# -- streaming -----------------------------------------------------------------------------------


@dataclass
class StreamTrace:
    status: int
    ttft_ms: float | None  # first event with text in it
    arrivals: list[float]  # seconds after the request was sent, one per SSE event


async def _one_stream(url: str, key: str, model: str, chunks: int, delay_ms: int, *,
                      from_connect: bool = False) -> StreamTrace:
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "Say hello"}]})
    host, port, raw = _request_bytes(url, key, body, {"x-fake-chunks": str(chunks),
                                                      "x-fake-chunk-delay-ms": str(delay_ms)})
    t_connect = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    t0 = t_connect if from_connect else time.perf_counter()
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    chunked = b"transfer-encoding: chunked" in head.lower()
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head.lower())
    left = int(m[1]) if m else None
    arrivals: list[float] = []
    ttft = None
    buf = b""
    try:
        while True:
            if chunked:
                size = int((await reader.readline()).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                data = data[:-2]
                if size == 0:
                    break
            else:
                data = await reader.read(65536) if left is None else await reader.read(min(65536, left))
                if not data:
                    break
                if left is not None:
                    left -= len(data)
            now = time.perf_counter() - t0
            buf += data
            while (end := buf.find(b"\n\n")) >= 0:
                event, buf = buf[:end], buf[end + 2:]
                arrivals.append(now)
                if ttft is None and b'"content":"' in event and b'"content":""' not in event:
                    ttft = now * 1000
            if left == 0:
                break
    finally:
        writer.close()
    return StreamTrace(status, ttft, arrivals)


def _stream_stats(traces: list[StreamTrace], delay_ms: int) -> dict[str, Any]:
    ttfts = [t.ttft_ms for t in traces if t.ttft_ms is not None]
    # Between chunks: from the first text chunk to the last chunk before `[DONE]` (upstream
    # paces the usage chunk TokenSense asks for and removes, so `[DONE]` comes one pause later).
    gaps = [g for t in traces for g in _gaps(t)[1:-1]]
    # An event held back shows as one long gap followed by a near-zero one (two events at once).
    held = sum(1 for t in traces for g1, g2 in zip(_gaps(t)[1:-1], _gaps(t)[2:-1])
               if g1 > 1.5 * delay_ms and g2 < 0.25 * delay_ms)
    return {
        "streams": len(traces),
        "errors": sum(1 for t in traces if t.status != 200),
        "events_per_stream": sorted({len(t.arrivals) for t in traces}),
        "ttft_ms_p50": _median(ttfts),
        "ttft_ms_max": max(ttfts) if ttfts else None,
        "gap_ms_mean": statistics.fmean(gaps) if gaps else None,
        "gap_ms_max": max(gaps) if gaps else None,
        "held_back": held,
    }


def _gaps(trace: StreamTrace) -> list[float]:
    return [(b - a) * 1000 for a, b in zip(trace.arrivals, trace.arrivals[1:])]


async def _streams(url: str, key: str, model: str, n: int, chunks: int, delay_ms: int) -> list[StreamTrace]:
    """`n` streams open at once, started `delay_ms / n` apart: their chunks arrive spread evenly."""

    async def staggered(i: int) -> StreamTrace:
        await asyncio.sleep(i * delay_ms / n / 1000)
        return await _one_stream(url, key, model, chunks, delay_ms)

    return list(await asyncio.gather(*(staggered(i) for i in range(n))))


async def _concurrent_streams(url: str, key: str, model: str, n: int, chunks: int,
                              delay_ms: int) -> tuple[list[StreamTrace], int]:
    """`n` streams opened at once (times from the connect); the traces, and how many failed outright."""
    results = await asyncio.gather(*(_one_stream(url, key, model, chunks, delay_ms, from_connect=True)
                                     for _ in range(n)), return_exceptions=True)
    traces = [r for r in results if isinstance(r, StreamTrace)]
    return traces, n - len(traces)


def _concurrency_stats(traces: list[StreamTrace], failed: int, expected_events: int | None) -> dict[str, Any]:
    ttfts = sorted(t.ttft_ms for t in traces if t.ttft_ms is not None)
    gaps = [g for t in traces for g in _gaps(t)[1:-1]]
    incomplete = sum(1 for t in traces if expected_events is not None and len(t.arrivals) != expected_events)
    return {
        "streams": len(traces) + failed,
        "errors": failed + sum(1 for t in traces if t.status != 200),
        "incomplete": incomplete,
        "ttft_ms_p50": _median(ttfts),
        "ttft_ms_p99": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else None,
        "gap_ms_max": max(gaps) if gaps else None,
    }


class PeakRss:
    """Samples the RSS of a process and its children every 50 ms while in the block."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = tree_rss_mb(self.pid) if self.pid else None
            if value is not None:
                self.peak = max(self.peak or 0.0, value)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- measuring -----------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree_rss_mb(pid: int) -> float | None:
    """RSS of a process and its children (a supervisor and its workers)."""
    values = [rss_mb(p) for p in [pid, *child_pids(pid)]]
    return sum(v for v in values if v is not None) if values[0] is not None else None


def tree_cpu_seconds(pid: int) -> float | None:
    values = [cpu_seconds(p) for p in [pid, *child_pids(pid)]]
    return sum(v for v in values if v is not None) if values[0] is not None else None



def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-not-found]

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def machine() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from mitmproxy.version import VERSION

    return {"nproc": os.cpu_count(), "cpu": model or platform.processor(), "platform": platform.platform(),
            "python": platform.python_version(), "mitmproxy": VERSION}


class Progress:
    """A live progress bar (rich) with one line of news per finished step."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.console = Console(stderr=True)
        self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=self.console, transient=True)
        self.task = self.bar.add_task("starting", total=total)
        self.started = time.monotonic()

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def doing(self, what: str) -> None:
        self.bar.update(self.task, description=what)

    def done(self, line: str) -> None:
        self.bar.console.print(f"[{time.monotonic() - self.started:5.0f} s] {line}", highlight=False)
        self.bar.advance(self.task)


def run(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tokensense-bench-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp)
        try:
            return _run(plan, args, procs)
        finally:
            procs.stop_all()
            if args.keep_logs:
                keep = Path(args.keep_logs)
                keep.mkdir(parents=True, exist_ok=True)
                for log in tmp.glob("*.log"):
                    shutil.copy(log, keep / log.name)


def _run(plan: Plan, args: argparse.Namespace, procs: Processes) -> dict[str, Any]:
    started = time.monotonic()
    print("Starting the upstream, a bare mitmdump and TokenSense...", file=sys.stderr)
    setup = start_services(plan, procs)
    load = Load(plan.client, procs.tmp, setup.key)
    print(f"upstream: {setup.upstream}; load: {load.describe()}", file=sys.stderr)

    targets = {"direct": setup.direct_url, "bare": setup.bare_url, "tokensense": setup.tokensense_url}
    pids = {"bare": setup.bare_pid, "tokensense": setup.tokensense_pid}
    for lane, (url, pid) in setup.multi.items():
        targets[lane] = url
        pids[lane] = pid
    for n, url in setup.lb_urls.items():
        targets[f"nginx+{n}w"] = url
    lanes = [(name, c) for c in plan.concurrency for name in targets
             if not (name.startswith("nginx+") and c == 1)]
    conc_urls = {"direct": setup.fake_url + CHAT_PATH, "bare": setup.bare_stream_url,
                 "tokensense": setup.tokensense_url}
    conc_pids = {"direct": setup.fake_pid, "bare": setup.bare_stream_pid, "tokensense": setup.tokensense_pid}
    for lane, (url, pid) in setup.multi.items():
        if not lane.endswith("-reuseport"):
            conc_urls[lane], conc_pids[lane] = url, pid
    conc_steps = plan.concurrent_rounds * len(conc_urls) if plan.concurrent_streams else 0
    steps = len(targets) + plan.rounds * len(lanes) + plan.stream_rounds * 3 + 1 + conc_steps
    results: dict[str, dict[str, Any]] = {f"{n}-c{c}": {"target": n, "concurrency": c, "rounds": []}
                                          for n, c in lanes}

    with Progress(steps) as progress:
        for name, url in targets.items():
            progress.doing(f"warm-up {name}")
            r = load.run(url, 16, seconds=plan.warmup)
            if r.errors:
                raise SystemExit(f"error: {name} answered {r.errors} of {r.requests} warm-up requests with errors "
                                 f"(logs: --keep-logs DIR).")
            progress.done(f"warm-up {name:<12} {r.rps:8.0f} req/s")
        rss_after_warmup = rss_mb(setup.tokensense_pid)

        for rnd in range(plan.rounds):
            order = lanes if rnd % 2 == 0 else list(reversed(lanes))
            for name, c in order:
                progress.doing(f"round {rnd + 1}/{plan.rounds}: {name} c={c}")
                pid = pids.get(name)
                cpu_before = tree_cpu_seconds(pid) if pid else None
                r = load.run(targets[name], c, seconds=plan.duration)
                row = r.as_dict()
                cpu_after = tree_cpu_seconds(pid) if pid else None
                # CPU time of the proxy per request: far less sensitive to noisy neighbours than req/s.
                row["cpu_ms_per_request"] = (round((cpu_after - cpu_before) * 1000 / r.requests, 4)
                                             if cpu_before is not None and cpu_after is not None and r.requests
                                             else None)
                results[f"{name}-c{c}"]["rounds"].append(row)
                cpu = f"  cpu {row['cpu_ms_per_request']:.3f} ms/req" if row["cpu_ms_per_request"] else ""
                progress.done(f"round {rnd + 1}/{plan.rounds} {name:<12} c={c:<3} {r.rps:8.0f} req/s  "
                              f"p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:8.3f} ms{cpu}"
                              + (f"  ERRORS {r.errors}" if r.errors else ""))

        stream_urls = {"direct": setup.fake_url + CHAT_PATH, "bare": setup.bare_stream_url,
                       "tokensense": setup.tokensense_url}
        stream_traces: dict[str, list[StreamTrace]] = {lane: [] for lane in stream_urls}
        for url in stream_urls.values():  # warm-up: the first xAI call looks its model up
            asyncio.run(_streams(url, setup.key, STREAM_MODEL, 2, 4, plan.chunk_delay_ms))
        for rnd in range(plan.stream_rounds):
            lanes_now = list(stream_urls) if rnd % 2 == 0 else list(reversed(stream_urls))
            for lane in lanes_now:
                progress.doing(f"streams {rnd + 1}/{plan.stream_rounds}: {lane}")
                traces = asyncio.run(_streams(stream_urls[lane], setup.key, STREAM_MODEL, plan.streams,
                                              plan.chunks, plan.chunk_delay_ms))
                stream_traces[lane] += traces
                ttft = _median([t.ttft_ms for t in traces if t.ttft_ms is not None])
                progress.done(f"streams {rnd + 1}/{plan.stream_rounds} {lane:<12} {len(traces)} streams, "
                              f"TTFT p50 {ttft or 0:.2f} ms, events {sorted({len(t.arrivals) for t in traces})}")

        conc_traces: dict[str, list[StreamTrace]] = {lane: [] for lane in conc_urls}
        conc_failed = dict.fromkeys(conc_urls, 0)
        conc_peak: dict[str, float | None] = dict.fromkeys(conc_urls)
        expected_events: int | None = None
        for rnd in range(plan.concurrent_rounds if plan.concurrent_streams else 0):
            order = list(conc_urls) if rnd % 2 == 0 else list(reversed(conc_urls))
            for lane in order:
                progress.doing(f"concurrency {rnd + 1}/{plan.concurrent_rounds}: {plan.concurrent_streams} "
                               f"streams, {lane}")
                time.sleep(1.0)  # the previous lane's connections closed
                with PeakRss(conc_pids.get(lane)) as peak:
                    traces, failed = asyncio.run(_concurrent_streams(
                        conc_urls[lane], setup.key, STREAM_MODEL, plan.concurrent_streams, plan.concurrent_chunks,
                        plan.chunk_delay_ms))
                if lane == "direct" and traces:
                    expected_events = statistics.mode(len(t.arrivals) for t in traces)
                conc_traces[lane] += traces
                conc_failed[lane] += failed
                if peak.peak is not None:
                    conc_peak[lane] = max(conc_peak[lane] or 0.0, peak.peak)
                st = _concurrency_stats(traces, failed, expected_events)
                progress.done(f"concurrency {rnd + 1}/{plan.concurrent_rounds} {lane:<12} "
                              f"{plan.concurrent_streams} streams: TTFT p50 {_f(st['ttft_ms_p50'], '.0f')} ms, "
                              f"p99 {_f(st['ttft_ms_p99'], '.0f')} ms, max gap {_f(st['gap_ms_max'], '.0f')} ms, "
                              f"errors {st['errors']}, peak RSS {_f(peak.peak, '.0f')} MB")

        progress.doing(f"memory: {plan.memory_requests} requests")
        time.sleep(0.5)  # let the recorder write the last batch
        rss_before = rss_mb(setup.tokensense_pid)
        # An exact number of requests: the asyncio client (wrk only knows durations).
        mem_load = asyncio.run(_asyncio_load(setup.tokensense_url, 16, setup.key, seconds=0,
                                             requests=plan.memory_requests))
        time.sleep(0.6)  # two of the recorder's flush intervals: the last batch is written
        rss_after = rss_mb(setup.tokensense_pid)
        progress.done(f"memory: RSS {rss_before or 0:.1f} MB -> {rss_after or 0:.1f} MB after "
                      f"{mem_load.requests} requests")

    summary = summarize(plan, results)
    streaming = {lane: _stream_stats(traces, plan.chunk_delay_ms) for lane, traces in stream_traces.items()}
    d, t, b = streaming["direct"], streaming["tokensense"], streaming["bare"]
    streaming["bare_added_ttft_ms"] = _sub(b["ttft_ms_p50"], d["ttft_ms_p50"])
    streaming["added"] = {
        "ttft_ms": _sub(t["ttft_ms_p50"], d["ttft_ms_p50"]),
        "gap_ms_mean": _sub(t["gap_ms_mean"], d["gap_ms_mean"]),
        "gap_ms_max": _sub(t["gap_ms_max"], d["gap_ms_max"]),
        "all_events_arrived": t["events_per_stream"] == d["events_per_stream"] and not t["errors"],
    }
    growth = _sub(rss_after, rss_before)
    memory = {
        "rss_mb_after_warmup": rss_after_warmup,
        "rss_mb_before": rss_before,
        "rss_mb_after": rss_after,
        "requests": mem_load.requests,
        "errors": mem_load.errors,
        "growth_mb": growth,
        "growth_mb_per_10k": growth * 10_000 / mem_load.requests if growth is not None and mem_load.requests else None,
    }
    # Cross-check over the whole run: every request TokenSense served after the warm-up.
    served = (sum(lane["requests"] for lane in results.values() if lane["target"] == "tokensense")
              + len(stream_traces["tokensense"]) + mem_load.requests)
    whole = _sub(rss_after, rss_after_warmup)
    memory["whole_run_requests"] = served
    memory["whole_run_growth_mb_per_10k"] = whole * 10_000 / served if whole is not None and served else None
    report: dict[str, Any] = {
        "command": "scripts/bench " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "upstream": setup.upstream,
        "load_generator": load.describe(),
        "plan": plan.__dict__,
        "lanes": results,
        "ratios": summary,
        "streaming": streaming,
        "memory": memory,
        "seconds": round(time.monotonic() - started, 1),
    }
    if plan.concurrent_streams:
        conc = {lane: _concurrency_stats(conc_traces[lane], conc_failed[lane], expected_events)
                | {"peak_rss_mb": conc_peak[lane]} for lane in conc_urls}
        bare_p99 = conc["bare"]["ttft_ms_p99"]
        for st in conc.values():
            st["ttft_p99_over_bare"] = _ratio(st["ttft_ms_p99"], bare_p99)
        report["concurrency"] = {"streams": plan.concurrent_streams, "chunks": plan.concurrent_chunks,
                                 "rounds": plan.concurrent_rounds, "lanes": conc}
    multi_lanes = [lane for lane in setup.multi if not lane.endswith("-reuseport")]
    if multi_lanes:
        multi = multi_lanes[0]
        report["workers_lane"] = {"workers": plan.workers, "lane": multi}
        for c in plan.concurrency:
            one, many = results[f"tokensense-c{c}"]["rounds"], results[f"{multi}-c{c}"]["rounds"]
            row = {"1": results[f"tokensense-c{c}"]["rps"], str(plan.workers): results[f"{multi}-c{c}"]["rps"],
                   "scaling": _median([m["rps"] / o["rps"] for o, m in zip(one, many) if o["rps"]]),
                   "over_bare": _median([m["rps"] / b["rps"] for b, m in zip(results[f"bare-c{c}"]["rounds"], many)
                                         if b["rps"]])}
            for lane in setup.multi:
                if lane != multi:
                    row[lane] = results[f"{lane}-c{c}"]["rps"]
            if f"nginx+{plan.nginx_workers}w-c{c}" in results:
                row[f"nginx+{plan.nginx_workers}w"] = results[f"nginx+{plan.nginx_workers}w-c{c}"]["rps"]
            report["workers_lane"][f"c{c}"] = row
    if setup.lb_urls:
        report["workers"] = {
            f"c{c}": {f"{n}": results[f"nginx+{n}w-c{c}"]["rps"] for n in sorted(setup.lb_urls)}
            | {"scaling": _ratio(results[f"nginx+{max(setup.lb_urls)}w-c{c}"]["rps"],
                                 results[f"nginx+1w-c{c}"]["rps"])}
            for c in plan.concurrency if c > 1
        }
    report["targets"] = check_targets(report)
    return report


def _sub(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(plan: Plan, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per lane (in place), and TokenSense against bare, paired within each round."""
    for lane in results.values():
        rounds = lane["rounds"]
        for k in ("rps", "p50_ms", "p99_ms", "mean_ms", "cpu_ms_per_request"):
            lane[k] = _median([r[k] for r in rounds if r.get(k) is not None])
        lane["requests"] = sum(r["requests"] for r in rounds)
        lane["errors"] = sum(r["errors"] for r in rounds)
    ratios = {}
    for c in plan.concurrency:
        ts, bare, direct = (results[f"{n}-c{c}"]["rounds"] for n in ("tokensense", "bare", "direct"))
        pairs = list(zip(ts, bare))
        ratios[f"c{c}"] = {
            "rps_tokensense_over_bare": _median([t["rps"] / b["rps"] for t, b in pairs if b["rps"]]),
            "rps_bare_over_direct": _median([b["rps"] / d["rps"] for b, d in zip(bare, direct) if d["rps"]]),
            "added_p50_ms": _median([t["p50_ms"] - b["p50_ms"] for t, b in pairs]),
            "added_p99_ms": _median([t["p99_ms"] - b["p99_ms"] for t, b in pairs]),
            "cpu_bare_over_tokensense": _median([b["cpu_ms_per_request"] / t["cpu_ms_per_request"] for t, b in pairs
                                                 if t.get("cpu_ms_per_request") and b.get("cpu_ms_per_request")]),
        }
    return ratios


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    ratios, streaming, memory = report["ratios"], report["streaming"], report["memory"]
    out = []

    def target(name: str, value: float | None, limit: float, at_least: bool, extra_ok: bool = True) -> None:
        met = value is not None and extra_ok and (value >= limit if at_least else value <= limit)
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    if "c16" in ratios:
        target("throughput c=16, TokenSense/bare >= 0.85", ratios["c16"]["rps_tokensense_over_bare"],
               TARGETS["throughput_c16_ratio"], True)
    if "c1" in ratios:
        target("added p50 latency c=1 over bare <= 0.3 ms", ratios["c1"]["added_p50_ms"], TARGETS["added_p50_c1_ms"],
               False)
    target("streaming TTFT over direct <= 2 ms, every chunk, none held back", streaming["added"]["ttft_ms"],
           TARGETS["stream_added_ttft_ms"], False,
           extra_ok=streaming["added"]["all_events_arrived"] and streaming["tokensense"]["held_back"] == 0)
    target("RSS growth per 10,000 requests <= 10 MB", memory["growth_mb_per_10k"], TARGETS["rss_growth_mb_per_10k"],
           False)
    workers = report.get("workers_lane")
    if workers and "c16" in workers:
        target(f"throughput c=16, {workers['workers']} workers / 1 >= 1.5", workers["c16"]["scaling"],
               TARGETS["workers_scaling_c16"], True)
    conc = report.get("concurrency")
    if conc:
        lanes = conc["lanes"]
        target(f"{conc['streams']} streams: TTFT p99 TokenSense (1 worker) / bare <= 1.2",
               lanes["tokensense"]["ttft_p99_over_bare"], TARGETS["concurrency_ttft_p99_over_bare"], False,
               extra_ok=not lanes["tokensense"]["errors"])
        multi = next((lane for lane in lanes if lane.startswith("ts-")), None)
        if multi:
            target(f"{conc['streams']} streams: TTFT p99 TokenSense ({multi}) / bare < 1",
                   lanes[multi]["ttft_p99_over_bare"], 1.0, False, extra_ok=not lanes[multi]["errors"])
    return out


# -- report --------------------------------------------------------------------------------------


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = report["machine"]
    console.print(f"\n[bold]TokenSense benchmark[/bold]  {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
                  f"mitmproxy {m['mitmproxy']}")
    console.print(f"upstream: {report['upstream']}; load: {report['load_generator']}; "
                  f"{report['plan']['rounds']} rounds x {report['plan']['duration']} s per lane; "
                  f"medians over rounds")

    table = Table(title="Throughput and latency")
    for col in ("lane", "c", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "errors"):
        table.add_column(col, justify="left" if col == "lane" else "right")
    for lane in report["lanes"].values():
        table.add_row(lane["target"], str(lane["concurrency"]), _f(lane["rps"], ".0f"), _f(lane["p50_ms"], ".3f"),
                      _f(lane["p99_ms"], ".2f"), _f(lane.get("cpu_ms_per_request"), ".3f"), str(lane["errors"]))
    console.print(table)

    table = Table(title="TokenSense (TS) against bare mitmdump, paired per round")
    for col in ("c", "TS/bare req/s", "bare/TS CPU", "bare/direct", "+p50 ms", "+p99 ms"):
        table.add_column(col, justify="right")
    for c, r in report["ratios"].items():
        table.add_row(c[1:], _f(r["rps_tokensense_over_bare"], ".3f"), _f(r["cpu_bare_over_tokensense"], ".3f"),
                      _f(r["rps_bare_over_direct"], ".3f"), _f(r["added_p50_ms"], "+.3f"), _f(r["added_p99_ms"], "+.2f"))
    console.print(table)

    s = report["streaming"]
    table = Table(title=f"Streaming ({report['plan']['chunks']} chunks, {report['plan']['chunk_delay_ms']} ms apart)")
    for col in ("lane", "streams", "events", "TTFT ms", "gap ms", "max gap", "held"):
        table.add_column(col, justify="left" if col == "lane" else "right")
    for lane in ("direct", "bare", "tokensense"):
        x = s[lane]
        table.add_row(lane, str(x["streams"]), ",".join(map(str, x["events_per_stream"])), _f(x["ttft_ms_p50"], ".2f"),
                      _f(x["gap_ms_mean"], ".2f"), _f(x["gap_ms_max"], ".2f"), str(x["held_back"]))
    a = s["added"]
    table.add_row("TokenSense-direct", "", "all" if a["all_events_arrived"] else "MISSING", _f(a["ttft_ms"], "+.2f"),
                  _f(a["gap_ms_mean"], "+.2f"), _f(a["gap_ms_max"], "+.2f"), "")
    console.print(table)

    mem = report["memory"]
    console.print(f"Memory (TokenSense RSS): {_f(mem['rss_mb_before'], '.1f')} -> {_f(mem['rss_mb_after'], '.1f')} MB "
                  f"over {mem['requests']} requests ({_f(mem['growth_mb_per_10k'], '+.2f')} MB per 10,000); whole run "
                  f"{_f(mem['rss_mb_after_warmup'], '.1f')} -> {_f(mem['rss_mb_after'], '.1f')} MB over "
                  f"{mem['whole_run_requests']} requests ({_f(mem['whole_run_growth_mb_per_10k'], '+.2f')} per 10,000)")
    if "workers_lane" in report:
        w = report["workers_lane"]
        table = Table(title=f"serve --workers {w['workers']} against one process (same rounds)")
        extra = [k for k in w.get("c16", w.get(next((k for k in w if k.startswith("c")), ""), {})) or {}
                 if k not in ("1", str(w["workers"]), "scaling", "over_bare")]
        for col in ("c", "1 worker req/s", f"{w['workers']} workers req/s", "scaling", "/bare", *extra):
            table.add_column(col, justify="right")
        for c, row in w.items():
            if c.startswith("c"):
                table.add_row(c[1:], _f(row["1"], ".0f"), _f(row[str(w["workers"])], ".0f"), _f(row["scaling"], ".2f"),
                              _f(row["over_bare"], ".2f"), *(_f(row.get(k), ".0f") for k in extra))
        console.print(table)
    if "concurrency" in report:
        cc = report["concurrency"]
        table = Table(title=f"Concurrency: {cc['streams']} streams opened at once, {cc['chunks']} chunks each, "
                            f"{cc['rounds']} rounds")
        for col in ("lane", "streams", "errors", "incomplete", "TTFT p50 ms", "TTFT p99 ms", "p99/bare",
                    "max gap ms", "peak RSS MB"):
            table.add_column(col, justify="left" if col == "lane" else "right")
        for lane, x in cc["lanes"].items():
            table.add_row(lane, str(x["streams"]), str(x["errors"]), str(x["incomplete"]), _f(x["ttft_ms_p50"], ".0f"),
                          _f(x["ttft_ms_p99"], ".0f"), _f(x["ttft_p99_over_bare"], ".2f"), _f(x["gap_ms_max"], ".0f"),
                          _f(x["peak_rss_mb"], ".0f"))
        console.print(table)
    if "workers" in report:
        for c, w in report["workers"].items():
            counts = ", ".join(f"{n} worker(s) {_f(v, '.0f')} req/s" for n, v in w.items() if n != "scaling")
            console.print(f"Workers behind nginx, c={c[1:]}: {counts}; scaling x{_f(w['scaling'], '.2f')}")

    table = Table(title="Targets")
    for col in ("target", "measured", "met"):
        table.add_column(col)
    for t in report["targets"]:
        table.add_row(t["target"], _f(t["value"], ".3f"), "[green]yes[/green]" if t["met"] else "[red]no[/red]")
    console.print(table)
    console.print(f"{report['seconds']:.0f} s in all.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (1 round of 1 s per lane)")
    parser.add_argument("--out", default="bench-results.json", help="JSON results file (default: %(default)s)")
    parser.add_argument("--rounds", type=int, help="rounds of all lanes (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per lane and round (default 4, quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up load per target (default 2, quick 1)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated (default: %(default)s)")
    parser.add_argument("--memory-requests", type=int, help="requests between the two RSS readings (default 10000)")
    parser.add_argument("--chunks", type=int, help="chunks per stream (default 64, quick 8)")
    parser.add_argument("--workers", default="auto",
                        help="the workers lane: `tokensense serve --workers N` (default: auto, one per core; 1: none)")
    parser.add_argument("--compare-sharing", action="store_true",
                        help="also `serve --workers N` with SO_REUSEPORT, and nginx in front of N single processes")
    parser.add_argument("--nginx-workers", type=int, default=0,
                        help="N > 1: also measure nginx in front of 1 and of N single-process `tokensense serve`")
    parser.add_argument("--streams", type=int, help="concurrency lane: streams open at once (default 500, quick 20; 0: "
                                                    "no lane)")
    parser.add_argument("--stream-chunks", type=int, help="concurrency lane: chunks per stream (default 40)")
    parser.add_argument("--stream-rounds", type=int, help="concurrency lane: rounds (default 2, quick 1)")
    parser.add_argument("--client", choices=("auto", "wrk", "asyncio"), default="auto",
                        help="load generator (default: wrk where installed)")
    parser.add_argument("--upstream", choices=("auto", "nginx", "fake"), default="auto",
                        help="fixed-answer upstream (default: nginx where installed)")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the processes' logs to DIR")
    parser.add_argument("--tokensense-src", metavar="DIR",
                        help="run TokenSense from the source tree in DIR (e.g. an older checkout) to compare")
    parser.add_argument("--serve-arg", metavar="ARG", action="append", default=[],
                        help="pass ARG to `tokensense serve` (repeat; `{free_port}` becomes a free port), "
                        "e.g. --serve-arg=--metrics-port --serve-arg={free_port}")
    parser.add_argument("--otlp", action="store_true",
                        help="turn on OpenTelemetry spans, exported to the upstream (needs --upstream nginx)")
    args = parser.parse_args(argv)
    args.workers_n = (len(os.sched_getaffinity(0)) if args.workers == "auto" else int(args.workers))
    plan = make_plan(args)
    report = run(plan, args)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"Results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
