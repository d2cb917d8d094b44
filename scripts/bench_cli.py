"""Time `tokensense usage ...` as whole processes (start-up, imports, connection, query), optionally against an older tree.

    .venv/bin/python scripts/bench_cli.py --database-url sqlite:////tmp/bench.db "--by workflow --since 24h --json"
    git archive main | tar -x -C /tmp/before      # the code to compare with, outside the checkout
    .venv/bin/python scripts/bench_cli.py --before /tmp/before --database-url URL "--by model,project --since 7d"

Each command runs `--runs` times in this venv's Python, from /tmp (so the checkout's own
package is not shadowing the older tree), alternating the lanes; printed: the median and
the fastest wall time, and the import time (`python -X importtime`, the sum of its
top-level entries but `site`, best of the runs). The source trees are byte-compiled first:
with PYTHONDONTWRITEBYTECODE set (as on the project's machines) an editable install has no
`.pyc` and every process would compile the package again. A database at a revision the
older tree does not know cannot be read by it: give it a copy at its own revision
(`--before-database-url`), or measure "before", then upgrade.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_IMPORT = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")


def _lane_env(tree: Path | None, url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    if url:
        env["TOKENSENSE_DATABASE_URL"] = url
    return env


def _run(env: dict[str, str], args: list[str]) -> tuple[float, float]:
    """(wall ms, import ms) of one `tokensense ARGS` process."""
    command = [sys.executable, "-X", "importtime", "-m", "tokensense.cli", *args]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd="/tmp", capture_output=True, text=True, check=False)
    wall = (time.perf_counter() - started) * 1000
    if result.returncode:
        raise SystemExit(f"tokensense {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    imports = sum(int(m.group(1)) for m in map(_IMPORT.match, result.stderr.splitlines()) if m and m.group(2) != "site")
    return wall, imports / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("commands", nargs="+", help="arguments of `tokensense usage`, one quoted string per command")
    parser.add_argument("--command", default="usage", help="the tokensense command (default usage; '' for none: --help)")
    parser.add_argument("--database-url", help="the database (default: TOKENSENSE_DATABASE_URL, else the home's)")
    parser.add_argument("--before", type=Path, help="a source tree of the code to compare with (its package folder)")
    parser.add_argument("--before-database-url", help="the database the older tree reads (a copy at its revision)")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)

    lanes = {"after": _lane_env(None, args.database_url)}
    trees = [ROOT / "tokensense"]
    if args.before is not None:
        before_url = args.before_database_url or args.database_url
        lanes = {"before": _lane_env(args.before.resolve(), before_url), **lanes}
        trees.append(args.before.resolve() / "tokensense")
    subprocess.run([sys.executable, "-m", "compileall", "-q", *map(str, trees)], check=True, stdout=subprocess.DEVNULL)
    for spec in args.commands:
        found: dict[str, list[tuple[float, float]]] = {name: [] for name in lanes}
        for _ in range(args.runs):
            for name, env in lanes.items():
                found[name].append(_run(env, [*args.command.split(), *spec.split()]))
        cells = []
        for name, runs in found.items():
            walls = [w for w, _ in runs]
            cells.append(
                f"{name} {statistics.median(walls):,.0f} ms (fastest {min(walls):,.0f}, "
                f"imports {min(i for _, i in runs):,.0f} ms)"
            )
        print(f"{args.command} {spec}: ".lstrip() + "; ".join(cells) + f"  [load {os.getloadavg()[0]:.1f}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
