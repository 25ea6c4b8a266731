"""The HTTP tests run on plain asyncio only.

With uvicorn serving inside the same uvloop loop, closing that loop at the
end of the run hung in `shutdown_default_executor` (seen, not yet
understood); until that is run down, these tests do not claim uvloop.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", {"use_uvloop": False})
