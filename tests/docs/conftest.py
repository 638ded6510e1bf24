"""Collects the docs pages' results, for a terminal summary of what ran and what was skipped, per page."""

from __future__ import annotations

import pytest

from tests.docs.run import PageResult

_RESULTS = pytest.StashKey[list[PageResult]]()


@pytest.fixture(scope="session")
def docs_results(request: pytest.FixtureRequest) -> list[PageResult]:
    return request.config.stash.setdefault(_RESULTS, [])


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS, [])
    if results:
        terminalreporter.section("docs pages")
        for result in results:
            terminalreporter.write_line(result.summary())
