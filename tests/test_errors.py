"""Every deliberate error is a DeepscopeError: a user can catch deepscope's complaints about their input with one
class, and each one still is the builtin kind it is (ValueError, TypeError, LookupError...)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import deepscope.errors as errors

SOURCE = Path(__file__).resolve().parent.parent / "src" / "deepscope"
BUILTIN_ERRORS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}
# Builtins that are not complaints about input: an abstract method, the protocols of iterators, sequences and
# attribute lookup that Python itself relies on, and a command's exit status.
ALLOWED = {"NotImplementedError", "StopIteration", "IndexError", "AttributeError", "SystemExit"}


def builtin_raises(text: str) -> list[tuple[int, str]]:
    """``(line, exception)`` for each ``raise`` of a builtin exception class in a module's source."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(raised, ast.Name) and raised.id in BUILTIN_ERRORS - ALLOWED:
            found.append((node.lineno, raised.id))
    return found


def test_src_raises_no_builtin_exception_directly():
    found = [
        f"{path.relative_to(SOURCE.parent)}:{line}: raise {name}"
        for path in sorted(SOURCE.rglob("*.py"))
        for line, name in builtin_raises(path.read_text())
    ]
    assert not found, "raise a deepscope.errors class instead:\n" + "\n".join(found)


def test_the_check_sees_a_builtin_raise():
    assert builtin_raises("def f(x):\n    if x:\n        raise ValueError('no')\n    raise\n") == [
        (3, "ValueError")
    ]
    assert builtin_raises("raise errors.SettingError('no')\n") == []


@pytest.mark.parametrize(
    "error",
    [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.DeepscopeError)
    ],
)
def test_every_error_class_is_also_a_builtin_kind(error):
    """So that ``except ValueError`` in a user's code keeps working around deepscope calls."""
    if error is errors.DeepscopeError:
        return
    assert any(
        issubclass(error, builtin) for builtin in (ValueError, TypeError, LookupError, RuntimeError, OSError)
    )
