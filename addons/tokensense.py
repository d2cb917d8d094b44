"""TokenSense gateway as a mitmproxy script.

Run it with:

    mitmdump -s addons/tokensense.py

With no `--mode` it is a reverse proxy on 127.0.0.1:8080 (`--listen-host`,
`--listen-port` change that). `tokensense serve` starts the same addons.
Settings come from the environment (`TOKENSENSE_HOME`, `TOKENSENSE_DATABASE_URL`, ...).
"""

from __future__ import annotations

import os
import sys

# mitmproxy puts this script's folder first on sys.path while loading it, so a
# plain `import tokensense` would import this very file. Import the package
# from the project root (or wherever it is installed) instead.
_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.dirname(_here)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if _root not in sys.path:
    sys.path.insert(0, _root)

from addons.stack import build_addons  # noqa: E402

addons = build_addons()
