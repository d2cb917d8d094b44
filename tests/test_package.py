"""TokenSense as a package: the wheel, installed into a new virtual environment, works away from the checkout.

The wheel is built from the files git tracks (as a fresh clone has them), without network (`pip wheel
--no-build-isolation`), and installed with `--no-deps` into a new venv whose dependencies come from the
project's venv (a `.pth` line: the project venv's own `.pth` files, the editable install among them, are not
read). Everything then runs from another folder, so nothing can be picked up from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, FakeProvider, free_port, stop, wait_healthy

pytestmark = pytest.mark.e2e


def _tracked_copy(destination: Path) -> Path:
    """The files git tracks (and the working tree's version of each), copied to `destination`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A venv with the wheel installed, and the environment to run its commands in from another folder."""
    tmp = tmp_path_factory.mktemp("package")
    source = _tracked_copy(tmp / "source")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(wheels), str(source)], check=True, timeout=600)
    (wheel,) = wheels.glob("tokensense-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies: the project venv's site-packages, after the new venv's own
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", "--disable-pip-version-check", str(wheel)], check=True, timeout=600)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSENSE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TOKENSENSE_HOME=str(tmp / "home"), PATH=f"{env_dir / 'bin'}:{env.get('PATH', '')}",
               PYTHONUNBUFFERED="1")
    return {"bin": env_dir / "bin", "python": python, "site": site, "cwd": elsewhere, "env": env, "wheel": wheel}


def run(installed: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True,
                          timeout=timeout)


def test_the_wheel_holds_the_data_files(installed: dict) -> None:
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for needed in ("tokensense/storage/migrations/script.py.mako", "tui/dashboard.tcss", "addons/tokensense.py",
                   "tokensense/storage/migrations/versions/0001_initial.py", "tokensense/demo/fakeprovider/__main__.py",
                   "tokensense/metering/price_overrides.py", "tui/web.py", "tui/templates/app_index.html"):
        assert needed in names, needed
    assert not any(name.startswith(("tests/", "docs/", "scripts/")) for name in names)


def test_installed_package_is_the_one_that_runs(installed: dict) -> None:
    where = run(installed, str(installed["python"]), "-c",
                "import addons, tokensense, tui; print(tokensense.__file__, addons.__file__, tui.__file__)")
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(installed["site"]), where.stdout
    assert run(installed, "tokensense", "--version").stdout.strip() == "tokensense 0.1.0"
    helped = run(installed, "tokensense", "--help")
    assert helped.returncode == 0 and "dashboard" in helped.stdout and "report" in helped.stdout


def test_demo_runs_from_another_folder(installed: dict) -> None:
    """`tokensense demo` starts the gateway and the fake providers from the installed package and records traffic;
    the migrations ran from the package's data files."""
    demo = run(installed, "tokensense", "demo", "--duration", "5", "--port", str(free_port()), "--rate", "5",
               timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    usage = run(installed, "tokensense", "usage", "--by", "workflow", "--json")
    assert usage.returncode == 0, usage.stderr
    workflows = {row["workflow"] for row in json.loads(usage.stdout)}
    assert len(workflows - {None}) >= 2, workflows
    current = run(installed, "tokensense", "db", "current", "--json")
    assert current.returncode == 0 and json.loads(current.stdout)["current"] == json.loads(current.stdout)["head"]
    report = run(installed, "tokensense", "report", "--since", "1h", "--format", "csv")
    assert report.returncode == 0 and report.stdout.splitlines()[-1].startswith("TOTAL,TOTAL,")


def test_mitmdump_runs_the_installed_addon(installed: dict, fake_provider: FakeProvider) -> None:
    """`mitmdump -s "$(tokensense addon-path)"` serves the gateway from the installed package."""
    addon = run(installed, "tokensense", "addon-path").stdout.strip()
    assert Path(addon).is_relative_to(installed["site"]) and Path(addon).is_file()
    env = {**installed["env"], "TOKENSENSE_OPENAI_BASE_URL": f"{fake_provider.url}/package",
           "OPENAI_API_KEY": "sk-test-package"}
    key = json.loads(subprocess.run(["tokensense", "keys", "create", "pkg", "--json"], cwd=installed["cwd"], env=env,
                                    capture_output=True, text=True, check=True, timeout=60).stdout)["key"]
    port = free_port()
    log_path = installed["cwd"] / "mitmdump.log"
    mitmdump = [str(installed["python"]), "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()"]
    with log_path.open("w") as log:
        proc = subprocess.Popen([*mitmdump, "-s", addon, "--listen-port", str(port)], cwd=installed["cwd"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, "mitmdump with the installed addon")
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                            headers={"Authorization": f"Bearer {key}", "x-workflow-tag": "packaged"},
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text + log_path.read_text()
        assert answer.headers["x-tokensense-cost-usd"]
    finally:
        stop(proc)
    assert fake_provider.last("package")["headers"]["authorization"] == "Bearer sk-test-package"
