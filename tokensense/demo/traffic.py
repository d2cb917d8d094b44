"""`tokensense demo`: the gateway, the built-in fake providers, and a steady stream of attributed traffic."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tokensense.settings import get_settings

PROVIDER_ENV_KEYS = {"OPENAI": "OPENAI_API_KEY", "ANTHROPIC": "ANTHROPIC_API_KEY", "GEMINI": "GEMINI_API_KEY",
                     "XAI": "XAI_API_KEY", "MISTRAL": "MISTRAL_API_KEY", "FAL": "FAL_KEY"}


@dataclass(frozen=True)
class Step:
    name: str
    model: str
    kind: str = "chat"  # chat | embed | messages | gemini
    stream_share: float = 0.3


@dataclass(frozen=True)
class Workflow:
    name: str
    source: str
    project: str
    steps: tuple[Step, ...]


WORKFLOWS = (
    Workflow("lead-enrichment", "make", "sales", (
        Step("search", "text-embedding-3-small", "embed"),
        Step("enrich", "gpt-4o-mini"),
        Step("summarize", "claude-haiku-4-5"),
        Step("score", "gemini-2.5-flash"),
    )),
    Workflow("support-bot", "zapier", "support", (
        Step("classify", "mistral-small-latest"),
        Step("answer", "claude-sonnet-4-6", "messages"),
        Step("escalate", "gpt-4.1-mini"),
    )),
    Workflow("doc-indexing", "airflow", "platform", (
        Step("embed", "text-embedding-3-small", "embed"),
        Step("caption", "gemini-2.5-flash", "gemini"),
        Step("tag", "grok-3-mini"),
    )),
)
PROMPTS = ("Summarize this account's last five support tickets in two sentences.",
           "Classify the following message: my invoice is wrong and I was charged twice.",
           "Write a friendly reply explaining how to reset a password.",
           "Extract the company name, size and industry from this signature block.")


@dataclass
class Totals:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)


def _wait_for(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {timeout:.0f}s")


def _create_demo_key() -> str:
    from sqlmodel import Session

    from tokensense.storage.db import get_engine
    from tokensense.storage.repo import create_key

    with Session(get_engine()) as session:
        _, key = create_key(session=session, name=f"demo-{uuid.uuid4().hex[:6]}", project="demo",
                            budget_usd=5.0, budget_period="daily")
    return key


def _request(step: Step, stream: bool) -> tuple[str, dict]:
    prompt = random.choice(PROMPTS)
    if step.kind == "embed":
        return "/v1/embeddings", {"model": step.model, "input": [prompt]}
    if step.kind == "messages":
        return "/v1/messages", {"model": step.model, "max_tokens": 300, "stream": stream,
                                "messages": [{"role": "user", "content": prompt}]}
    if step.kind == "gemini":
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"/v1beta/models/{step.model}:{action}", {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    return "/v1/chat/completions", {"model": step.model, "stream": stream, "max_tokens": 300,
                                    "messages": [{"role": "user", "content": prompt}]}


async def _one_run(client: httpx.AsyncClient, key: str, totals: Totals, workflow: Workflow, pause: float) -> None:
    execution = f"run-{uuid.uuid4().hex[:8]}"
    for step in workflow.steps:
        stream = step.kind != "embed" and random.random() < step.stream_share
        path, body = _request(step, stream)
        headers = {"authorization": f"Bearer {key}", "x-workflow-tag": workflow.name, "x-step": step.name,
                   "x-execution-id": execution, "x-source": workflow.source, "x-project": workflow.project,
                   "x-fake-reply": " ".join(random.choice(PROMPTS).split()[: random.randint(4, 12)])}
        roll = random.random()
        if roll < 0.03:
            headers["x-fake-status"] = random.choice(["429", "500"])
        elif roll < 0.05:
            body["model"] = "gpt-unknown-model" if "model" in body else body.get("model")
        elif roll < 0.25:
            headers["x-fake-delay"] = f"{random.uniform(0.2, 1.5):.2f}"
        totals.sent += 1
        try:
            if stream:
                async with client.stream("POST", path, json=body, headers=headers) as response:
                    async for _ in response.aiter_bytes():
                        pass
                    status = response.status_code
            else:
                status = (await client.post(path, json=body, headers=headers)).status_code
        except httpx.HTTPError:
            status = 0
        if 200 <= status < 300:
            totals.ok += 1
        else:
            totals.errors += 1
        await asyncio.sleep(pause)


async def _traffic(url: str, key: str, rate: float, duration: float, stop: asyncio.Event) -> Totals:
    totals = Totals()
    tasks: set[asyncio.Task] = set()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        step_pause = 0.2
        next_start = time.monotonic()
        while not stop.is_set() and (not duration or time.monotonic() - totals.started < duration):
            workflow = random.choice(WORKFLOWS)
            task = asyncio.create_task(_one_run(client, key, totals, workflow, step_pause))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            # One run sends len(steps) requests; space the runs to keep about `rate` requests per second.
            next_start += len(workflow.steps) / rate
            elapsed = time.monotonic() - totals.started
            print(f"\r  demo traffic: {totals.sent} sent, {totals.ok} ok, {totals.errors} errors "
                  f"in {elapsed:.0f}s   ", end="", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(next_start - time.monotonic(), 0))
            except TimeoutError:
                pass
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    print()
    return totals


def run_demo(args: argparse.Namespace) -> int:
    settings = get_settings()
    here = Path(__file__).resolve().parent
    fake = subprocess.Popen([sys.executable, "-m", "tokensense.demo.fakeprovider", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    gateway = None
    try:
        assert fake.stdout is not None
        fake_url = fake.stdout.readline().strip().rsplit(" ", 1)[-1]
        if not fake_url.startswith("http"):
            print("error: the fake provider did not start", file=sys.stderr)
            return 1
        env = dict(os.environ)
        env["TOKENSENSE_IGNORE_STORED_PROVIDERS"] = "1"
        for name, var in PROVIDER_ENV_KEYS.items():
            env[f"TOKENSENSE_{name}_BASE_URL"] = fake_url
            env[var] = f"demo-{name.lower()}-key"
        gateway = subprocess.Popen([sys.executable, "-c", "from tokensense.cli.commands import main; raise SystemExit(main())",
                                    "serve", "--port", str(args.port)], env=env, cwd=here.parent,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{args.port}"
        _wait_for(f"{url}/health", gateway, "the gateway")
        key = _create_demo_key()
        print(f"TokenSense demo: gateway on {url}, fake providers on {fake_url}, database "
              f"{settings.effective_database_url}")
        print("  In another terminal: tokensense dashboard      (Ctrl+C here stops the demo)")
        stop = asyncio.Event()

        async def main() -> Totals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            return await _traffic(url, key, args.rate, args.duration, stop)

        totals = asyncio.run(main())
        print(f"Sent {totals.sent} requests ({totals.ok} ok, {totals.errors} errors). "
              "`tokensense usage --by workflow` shows what they cost.")
        return 0
    except RuntimeError as e:
        detail = gateway.stderr.read().decode(errors="replace")[-2000:] if gateway and gateway.stderr and \
            gateway.poll() is not None else ""
        print(f"error: {e}\n{detail}", file=sys.stderr)
        return 1
    finally:
        for proc in (gateway, fake):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
