"""Issue 11's memory figure: RSS of the gateway while 3 parallel 300 MB bodies arrive without a key.

Run from the project root: `.venv/bin/python scripts/unauth_body_rss.py` (starts the fake provider and a gateway
on loopback, sends chunked and Content-Length uploads, prints RSS before, at peak and after, in MB).
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import start_fake_provider, start_gateway, stop

MB = 1 << 20


def main() -> None:
    fake = start_fake_provider()
    gateway = start_gateway(Path(tempfile.mkdtemp()), fake)
    pid = gateway.process.pid
    host, port = gateway.url.removeprefix("http://").split(":")

    def rss() -> float:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))

    def upload(mode: str) -> None:
        chunk = b"x" * MB
        with socket.create_connection((host, int(port)), timeout=120) as s:
            if mode == "chunked":
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
                for _ in range(300):
                    s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                s.sendall(b"0\r\n\r\n")
            else:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (300 * MB))
                try:
                    for _ in range(300):
                        s.sendall(chunk)
                except OSError:
                    pass  # answered 401 before the body was read: the gateway may close early
            s.recv(64)

    try:
        for mode in ("chunked", "content-length"):
            before = peak = rss()
            threads = [threading.Thread(target=upload, args=(mode,)) for _ in range(3)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                peak = max(peak, rss())
                time.sleep(0.05)
            time.sleep(1)
            print(json.dumps({"mode": mode, "rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1),
                              "rss_after_mb": round(rss(), 1)}))
    finally:
        stop(gateway.process)
        stop(fake.process)


if __name__ == "__main__":
    main()
