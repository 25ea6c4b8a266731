"""Every code block in README.md and docs/ runs as written.

```python blocks run as scripts; ```sh blocks run line by line (each line a
`dtxn ...` command, comments ignored) with this environment's `dtxn` on PATH.
```text blocks are output or formats, not code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```(python|sh)\n(.*?)```", re.DOTALL)
BIN = Path(sys.executable).parent


def _blocks() -> list[tuple[str, str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for index, (lang, code) in enumerate(BLOCK.findall(path.read_text())):
            found.append((f"{path.name}#{index}", lang, code))
    return found


@pytest.mark.parametrize(("where", "lang", "code"), _blocks(), ids=[w for w, _, _ in _blocks()])
def test_the_code_block_runs(where: str, lang: str, code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if lang == "python":
        commands = [[sys.executable, "-c", code]]
    else:
        commands = [
            ["bash", "-c", line]  # bash itself drops a trailing "# comment"
            for line in code.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    for command in commands:
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, f"{where} failed: {command[-1]}\n{result.stderr}"
