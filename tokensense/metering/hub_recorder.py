"""A worker's usage recorder: hands each record to the supervisor's hub, which writes all workers' records.

`submit` runs on the proxy's event loop as a call ends, before its answer goes
to the client. It writes the record to a non-blocking Unix socket at once (one
system call, no waiting): once it is in the socket the kernel holds it for the
hub, so the record survives this process being killed. Only when the hub falls
behind and the socket is full does the rest wait in memory for a sender thread.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
from collections.abc import Callable
from datetime import datetime

from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)

RECORD_PREFIX = b'{"op":"record","r":'  # the hub reads the record after it without json.loads


class HubRecorder:
    """The `UsageRecorder` interface (`submit`, `flush`, `close`, `written`) over the hub's socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.connect(path)
        self._socket.setblocking(False)
        self._lock = threading.Condition()
        self._backlog = bytearray()  # bytes the socket would not take yet, in order
        self._closed = False
        self._broken = False
        self.written = 0  # records handed to the hub
        self._sender = threading.Thread(target=self._send_backlog, name="tokensense-hub-recorder", daemon=True)
        self._sender.start()

    def submit(self, record: UsageCreate) -> None:
        data = RECORD_PREFIX + record.model_dump_json().encode() + b"}\n"
        with self._lock:
            if self._broken:
                log.error("dropped a usage record: the supervisor's hub is gone")
                return
            if not self._backlog:
                try:
                    sent = self._socket.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as e:
                    self._fail(e)
                    return
                if sent == len(data):
                    self.written += 1
                    return
                data = data[sent:]
            self._backlog += data
            self.written += 1
            self._lock.notify_all()

    def settled_spend(self, key_id: str, since: datetime | None, database_sum: Callable[[], float]) -> float:
        """The key's spend since `since`, asked of the hub, which writes the records: the database's sum plus the
        records it has not written yet, read together (blocking; a connection of its own). `database_sum` is
        not used: the hub reads the database itself, under its writer's commit lock."""
        self.flush(timeout=5.0)  # this worker's records are in the socket, ahead of the question
        question = {"i": 1, "op": "settled", "a": [key_id, since.isoformat() if since else None]}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30.0)
            conn.connect(self.path)
            conn.sendall(json.dumps(question).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError("the supervisor's hub closed the connection")
                reply += chunk
        answer = json.loads(reply)
        if "ok" not in answer:
            raise RuntimeError(f"hub: {answer.get('err')}")
        return float(answer["ok"])

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every record submitted so far is in the socket (the hub writes it to the database)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._backlog or self._broken, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        drained = self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if not drained:
            log.error("the supervisor's hub did not take %d bytes of usage records", len(self._backlog))
        self._sender.join(timeout=1)
        self._socket.close()

    def _fail(self, error: OSError) -> None:
        self._broken = True
        log.error("lost the connection to the supervisor's hub: %s", error)
        self._backlog.clear()
        self._lock.notify_all()

    def _send_backlog(self) -> None:
        poller = select.poll()
        poller.register(self._socket, select.POLLOUT)
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._backlog or self._closed or self._broken)
                if self._closed or self._broken:
                    return
            poller.poll(1000)  # until the hub has read some: no lock held while waiting
            with self._lock:
                if not self._backlog:
                    continue
                try:
                    sent = self._socket.send(self._backlog)
                except BlockingIOError:
                    continue
                except OSError as e:
                    self._fail(e)
                    return
                del self._backlog[:sent]
                if not self._backlog:
                    self._lock.notify_all()
