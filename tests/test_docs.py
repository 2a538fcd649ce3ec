"""The documentation is true: its code runs against the current API, its links lead somewhere, every public name
has a docstring, and the example notebooks run.

The checks `make docs` runs inside MkDocs (scripts/docs_hooks.py) run here too, without building the site; the
snippets of the pages and the notebooks take minutes together and run in the slow pass.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
NOTEBOOKS = sorted((DOCS / "notebooks").glob("*.ipynb"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _name(path: Path) -> str:
    return str(path.relative_to(DOCS))


def test_every_public_name_has_a_docstring():
    assert _hooks().undocumented_names() == []


def test_the_flat_api_page_documents_every_flat_name():
    assert _hooks().flat_names_left_out() == []


def test_the_docs_checks_catch_what_they_look_for(tmp_path):
    hooks = _hooks()
    failures, attempted = doctest.testmod(hooks)
    assert attempted >= 4 and failures == 0
    trimmed = tmp_path / "deepscope.md"
    trimmed.write_text(
        (DOCS / "api" / "deepscope.md").read_text().replace("::: deepscope.attribution.attribute\n", "")
    )
    assert hooks.flat_names_left_out(trimmed) == ["attribute"]


def test_the_site_lists_every_page_and_notebook():
    nav = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r"(\S+\.(?:md|ipynb))\s*$", nav, flags=re.MULTILINE))
    expected = {_name(path) for path in [*PAGES, *NOTEBOOKS]} - {"README-links.md"}
    assert expected - listed == set()


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_of_a_page_lead_to_files(page):
    broken = []
    for target in MARKDOWN_LINK.findall(page.read_text()):
        path = target.split("#", 1)[0]
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path):
            continue
        if not (page.parent / path).exists():
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_blocks_of_a_page_are_python(page):
    for index, block in enumerate(PYTHON_BLOCK.findall(page.read_text())):
        compile(block, f"{_name(page)} block {index}", "exec")


PAGES_WITH_CODE = [page for page in PAGES if PYTHON_BLOCK.search(page.read_text())]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_name)
def test_python_blocks_of_a_page_run(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace, as a reader pastes them, in an empty directory."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for index, block in enumerate(PYTHON_BLOCK.findall(page.read_text())):
        exec(compile(block, f"{_name(page)} block {index}", "exec"), namespace)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_name)
def test_a_notebook_runs(notebook, tmp_path, monkeypatch):
    # The kernel is another process: it finds this checkout's deepscope through PYTHONPATH.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        output for cell in nb.cells for output in cell.get("outputs", []) if output.output_type == "error"
    ]
    pictures = [
        output
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {}) or "<img" in output.get("data", {}).get("text/html", "")
    ]
    assert errors == [] and pictures, "a notebook runs without errors and shows pictures"


def test_the_license_and_citation_match_the_package():
    import yaml

    from deepscope import __version__

    license_line = re.search(r"^license = (.*)$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)[1]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert license_line == '{ text = "Apache-2.0" }' and citation["license"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert citation["cff-version"] == "1.2.0" and citation["version"] == __version__
    assert (
        citation["title"]
        and citation["abstract"]
        and citation["authors"] == [{"name": "The deepscope developers"}]
    )


README = DOCS.parent / "README.md"


def test_the_readme_links_lead_to_files_and_it_stays_a_front_door():
    text = README.read_text()
    broken = [
        target
        for target in MARKDOWN_LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)
        and not (README.parent / target.split("#", 1)[0]).exists()
    ]
    assert broken == []
    assert len(text.encode()) <= 8 * 1024, "the README is the front door; detail belongs in docs/"


@pytest.mark.slow
def test_the_readme_quick_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for index, block in enumerate(PYTHON_BLOCK.findall(README.read_text())):
        exec(compile(block, f"README.md block {index}", "exec"), namespace)
