"""Every block of README.md and of the mkdocs nav's pages runs as written, in order, in one workspace.

``pytest -m docs tests/docs`` runs the pages alone; ``python -m tests.docs.run`` does the same from a shell,
keeping its workspace for reruns of one page.
"""

from __future__ import annotations

import pytest

from tests.docs.blocks import display_name
from tests.docs.run import REPO, PageResult, check_collection, default_pages, pages_outside_nav, run_page

MKDOCS = REPO / "mkdocs.yml"
PAGE_TIMEOUT_S = 3600  # a page's commands have their own timeouts (300 s each unless annotated)


def _page_params() -> list:
    if not MKDOCS.exists():
        reason = f"{display_name(MKDOCS, REPO)} not found: the docs site (its nav: the pages) is not written"
        return [pytest.param(None, id="no-mkdocs.yml", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(page, id=display_name(page, REPO)) for page in default_pages()]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One directory for all pages, as for a reader who follows the README, then the docs."""
    return tmp_path_factory.mktemp("docs-workspace")


@pytest.mark.docs
@pytest.mark.timeout(PAGE_TIMEOUT_S)
@pytest.mark.parametrize("page", _page_params())
def test_page_runs_as_written(page, workspace, docs_results: list[PageResult]):
    earlier_failures = [r.page for r in docs_results if not r.ok]
    result = run_page(page, workspace, on_block=lambda r: print(r.line()))
    docs_results.append(result)
    message = result.report()
    if earlier_failures:
        message += (
            f"\n(an earlier page failed, and this one may need its files: {', '.join(earlier_failures)})"
        )
    assert result.ok, message


def test_every_page_passes_the_collection_check():
    """Languages, annotations and transcripts of every page: a block the runner cannot place fails fast."""
    errors = check_collection(default_pages())
    assert not errors, "\n".join(errors)


def test_every_docs_page_is_in_the_nav():
    """A page outside the nav would never be run (nor shown by mkdocs)."""
    if not MKDOCS.exists():
        pytest.skip(f"{display_name(MKDOCS, REPO)} not found: the docs site is not written")
    missing = [display_name(page, REPO) for page in pages_outside_nav(MKDOCS)]
    assert not missing, f"pages not in {display_name(MKDOCS, REPO)}'s nav: {', '.join(missing)}"
