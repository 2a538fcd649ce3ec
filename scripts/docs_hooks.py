"""The documentation site's checks and one griffe extension (mkdocs.yml names this file twice).

- As an MkDocs hook, ``on_pre_build`` fails ``mkdocs build`` when a public name has no docstring, or when the API
  page of the flat names (docs/api/deepscope.md) leaves one of ``deepscope.__all__`` out; ``on_post_build``
  fails it when a relative link or image in the built site leads nowhere (MkDocs checks the Markdown pages'
  links itself, not those inside notebooks or generated pages). "Public" is what a user
  reaches through an ``__all__``: every name in the ``__all__`` of deepscope's public subpackages, and the
  functions and classes of a public module that has no ``__all__``.
- As a griffe extension, :class:`DocstringMarkup` shows the ``>>>`` examples of docstrings as Python console
  blocks (Markdown would read the ``>`` as quotes) and their Sphinx roles (``:func:`name```) as code.

tests/test_docs.py runs the same checks without building the site.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_PACKAGES = [
    "zoo",
    "probe",
    "attribution",
    "units",
    "render",
    "metrics",
    "atlas",
    "workspace",
    "errors",
]
FLAT_NAMES_PAGE = ROOT / "docs" / "api" / "deepscope.md"


def _documented(obj: griffe.Object) -> bool:
    return obj.docstring is not None and bool(obj.docstring.value.strip())


def _exported_names(module: griffe.Module) -> list[str]:
    if module.exports is not None:
        return [name if isinstance(name, str) else name.name for name in module.exports]
    return [
        name
        for name, member in module.members.items()
        if not name.startswith("_") and not member.is_alias and (member.is_function or member.is_class)
    ]


def undocumented_names(source: Path = ROOT / "src") -> list[str]:
    """The public names (dotted, as a user writes them) whose object has no docstring of its own.

    >>> undocumented_names()
    []
    """
    package = griffe.load(
        "deepscope", search_paths=[str(source)], resolve_aliases=True, resolve_external=False
    )
    missing: list[str] = []
    seen: set[str] = set()

    def check(module: griffe.Module) -> None:
        if module.path in seen:
            return
        seen.add(module.path)
        if not _documented(module):
            missing.append(module.path)
        for name in _exported_names(module):
            member = module[name]
            target = member.final_target if member.is_alias else member
            if target.is_module:
                check(target)
            elif not _documented(target):
                missing.append(f"{module.path}.{name}")

    for name in PUBLIC_PACKAGES:
        check(package[name])
    return missing


def flat_names_left_out(page: Path = FLAT_NAMES_PAGE) -> list[str]:
    """The names of ``deepscope.__all__`` that the flat API page neither documents (``::: deepscope....NAME``)
    nor links to (``NAME.md``, for a subpackage).

    >>> flat_names_left_out()
    []
    """
    import deepscope  # the lazy package: reading __all__ imports no subpackage

    text = page.read_text()
    documented = set(re.findall(r"^::: deepscope\.[\w.]*?(\w+)$", text, flags=re.MULTILINE))
    linked = set(re.findall(r"\]\((\w+)\.md\)", text))
    return [
        name
        for name in deepscope.__all__
        if name not in documented and name not in linked and f"`{name}`" not in text
    ]


def on_pre_build(config: Any, **kwargs: Any) -> None:
    """MkDocs hook: stop the build on a public name without a docstring or left out of the flat API page."""
    from mkdocs.exceptions import PluginError

    problems = [f"{name} has no docstring" for name in undocumented_names()]
    problems += [
        f"{name} (in deepscope.__all__) is not on {FLAT_NAMES_PAGE.name}" for name in flat_names_left_out()
    ]
    if problems:
        raise PluginError("undocumented public names:\n  " + "\n  ".join(problems))


_LINK = re.compile(r"""(?:href|src)=["']([^"'#?]*)[^"']*["']""")


def broken_links(site: Path) -> list[str]:
    """Relative links and images in the built HTML of ``site`` whose target does not exist, as
    ``page: target``.

    >>> import tempfile
    >>> site = Path(tempfile.mkdtemp())
    >>> _ = (site / "index.html").write_text('<a href="guide/">x</a> <img src="a.png"> <a href="#top">t</a>')
    >>> _ = (site / "a.png").write_bytes(b"")
    >>> broken_links(site)
    ['index.html: guide/']
    """
    broken = []
    for page in sorted(site.rglob("*.html")):
        for target in _LINK.findall(page.read_text(errors="replace")):
            if not target or re.match(
                r"^[a-z][a-z0-9+.-]*:|^//", target
            ):  # same page, or a URL with a scheme
                continue
            resolved = (site / target.lstrip("/")) if target.startswith("/") else (page.parent / target)
            if not (resolved.is_file() or (resolved / "index.html").is_file()):
                broken.append(f"{page.relative_to(site)}: {target}")
    return broken


def on_post_build(config: Any, **kwargs: Any) -> None:
    """MkDocs hook: stop the build on a relative link or image in the built site that leads nowhere."""
    from mkdocs.exceptions import PluginError

    broken = broken_links(Path(config["site_dir"]))
    if broken:
        raise PluginError("links that lead nowhere:\n  " + "\n  ".join(broken))


_PROMPT = re.compile(r"^\s*>>> ")


def fence_doctests(text: str) -> str:
    r"""``text`` with each run of doctest lines (``>>>`` and ``...`` prompts and the output up to a blank line)
    put in a ``pycon`` code fence.

    >>> fence_doctests("Adds.\n\n>>> 1 + 1\n2\n\nDone.").splitlines()
    ['Adds.', '', '```pycon', '>>> 1 + 1', '2', '```', '', 'Done.']
    """
    lines = text.splitlines()
    out: list[str] = []
    inside_fence = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.lstrip().startswith("```"):
            inside_fence = not inside_fence
        if inside_fence or not _PROMPT.match(line):
            out.append(line)
            index += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.append(f"{indent}```pycon")
        while index < len(lines) and lines[index].strip():
            out.append(lines[index])
            index += 1
        out.append(f"{indent}```")
    return "\n".join(out)


_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def plain_roles(text: str) -> str:
    """``text`` with Sphinx cross-reference roles as inline code (``~`` keeps the last part, as Sphinx shows it).

    >>> plain_roles("see :func:`attribute` and :class:`~deepscope.atlas.Histogram`")
    'see `attribute` and `Histogram`'
    """
    return _ROLE.sub(lambda match: f"`{match[2].rsplit('.', 1)[-1] if match[1] else match[2]}`", text)


class DocstringMarkup(griffe.Extension):
    """Shows the ``>>>`` examples of docstrings as highlighted Python console blocks, and Sphinx roles as code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(fence_doctests(obj.docstring.value))
