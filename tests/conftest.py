"""Shared fixtures. Tests find reference data at ../shared and skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GEO_SSL_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "docs: runs the blocks of README.md and the docs pages (tests/docs; run alone with -m docs)",
    )


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(
            f"reference data not found at {SHARED} (clone the project beside shared/ to run this test)"
        )
    return SHARED
