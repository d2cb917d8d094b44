# Shared by scripts/serve and scripts/test: find Python >= 3.12 and make .venv with the project installed.
# Sourced, not run. Sets $ROOT and $VENV_PY.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
VENV_PY="$VENV/bin/python"

_ok_python() {  # prints the interpreter if it runs and is >= 3.12
    "$1" -c 'import sys; raise SystemExit(sys.version_info < (3, 12))' >/dev/null 2>&1 && echo "$1"
}

find_python() {
    local candidate
    for candidate in "${TOKENSENSE_PYTHON:-}" python3.13 python3.12 python3; do
        [ -n "$candidate" ] && _ok_python "$candidate" && return 0
    done
    # pyenv shims refuse to run unversioned interpreters; the interpreters themselves are fine.
    if command -v pyenv >/dev/null 2>&1 || [ -d "${PYENV_ROOT:-$HOME/.pyenv}" ]; then
        local root
        root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
        for candidate in $(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
            _ok_python "$candidate" && return 0
        done
    fi
    for candidate in /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
        [ -x "$candidate" ] && _ok_python "$candidate" && return 0
    done
    return 1
}

ensure_venv() {  # $1: pip extras, e.g. "[test]" or ""
    local extras="${1:-}"
    local stamp="$VENV/.tokensense-installed$extras"
    if [ ! -x "$VENV_PY" ] || ! _ok_python "$VENV_PY" >/dev/null; then
        local py
        py="$(find_python)" || { echo "error: TokenSense needs Python 3.12 or newer; none found (set TOKENSENSE_PYTHON)." >&2; exit 1; }
        echo "Creating .venv with $py" >&2
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        echo "Installing TokenSense$extras into .venv (first run only)..." >&2
        "$VENV_PY" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
        "$VENV_PY" -m pip install --quiet --disable-pip-version-check -e "$ROOT$extras"
        touch "$stamp"
    fi
}
