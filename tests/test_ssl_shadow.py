"""The project's ``ssl`` package must leave the standard library's ``ssl`` fully working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import ssl
assert ssl.__file__.startswith({repo!r}), ssl.__file__   # the project's package was imported
assert hasattr(ssl, "__path__")                            # ... and it is a package
import torch, urllib.request, asyncio, http.client
ctx = ssl.create_default_context()
assert isinstance(ctx, ssl.SSLContext)
assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
assert ssl.OPENSSL_VERSION and ssl.PROTOCOL_TLS_CLIENT
urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))
loop = asyncio.new_event_loop(); loop.close()
import _ssl
assert ssl.SSLError is _ssl.SSLError
print("ok", torch.__version__)
"""


def test_import_ssl_from_repo_root_keeps_stdlib_working() -> None:
    # ``python -c`` puts the working directory first on sys.path, as ``python -m ssl.curriculum`` does.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(repo=str(REPO))], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_torch_first_then_ssl_from_repo_root() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import torch, ssl; ssl.create_default_context(); print('ok')"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
