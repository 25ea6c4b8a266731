"""Without the http extra, dtxn still imports, and the HTTP modules say which extra they need."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('httpx', 'starlette'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import dtxn.runtime, dtxn.runtime.resources
for module in ('dtxn.runtime.resources.http', 'dtxn.runtime.http_service'):
    try:
        __import__(module)
    except ImportError as exc:
        print(module, exc)
"""


def test_dtxn_imports_without_httpx_and_the_http_modules_name_the_extra() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == [
        "dtxn.runtime.resources.http dtxn.runtime.resources.http needs httpx:"
        " pip install 'dtxn[http]'",
        "dtxn.runtime.http_service dtxn.runtime.http_service needs starlette:"
        " pip install 'dtxn[http]'",
    ], result.stdout
