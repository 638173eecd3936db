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
    # pip's own output (resolver notes, index warnings, the editable build) goes to a log file;
    # one line says what is installed, and a failure names the log.
    LOG="$ROOT/setup.log"
    echo "setting up $VENV: torch 2.14.1, torchvision 0.29.1 and this project with its test tools (first run only; log: $LOG) ..." >&2
    if ! {
        { [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"; } &&
        "$VENV/bin/python" -m pip install --upgrade pip &&
        # torch and torchvision pinned to the releases this project is tested with;
        # the rest resolves from pyproject.toml.
        "$VENV/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1" &&
        "$VENV/bin/python" -m pip install -e ".[test]"
    } >"$LOG" 2>&1; then
        echo "set-up failed; pip's output is in $LOG (its last lines:)" >&2
        tail -n 5 "$LOG" >&2
        exit 1
    fi
    echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
