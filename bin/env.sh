# Sourced by the bin/ scripts: create (once) and activate the project's virtual
# environment in .venv, reinstalling when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CXR_VENV:-$ROOT/.venv}"
STAMP="$VENV/.cxr-installed"
PY="${PYTHON:-python3}"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    echo "setting up $VENV (first run only) ..." >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    # torch and torchvision pinned to the releases this project is tested with;
    # the rest resolves from pyproject.toml.
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" >&2
    "$VENV/bin/python" -m pip install -q -e ".[test]" >&2
    echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
