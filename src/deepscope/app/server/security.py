"""Who may use the server and what it may open: the token beyond loopback, the workspace root, upload caps."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from deepscope.app.server.problems import ForbiddenPathError, TokenError

COOKIE = "deepscope_token"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A random token (48 hex digits), as Jupyter prints one."""
    return secrets.token_hex(24)


@dataclass(frozen=True)
class Access:
    """The token every request must carry (None: no token, the loopback default)."""

    token: str | None = None

    @classmethod
    def for_host(cls, host: str, token: str | None = None) -> Access:
        """No token on loopback unless one is given; beyond it, the given token or a new one."""
        if token:
            return cls(token)
        return cls(None if is_loopback(host) else new_token())

    @property
    def required(self) -> bool:
        return self.token is not None

    def check(self, offered: str | None) -> None:
        """Raise :class:`TokenError` unless ``offered`` is the token (compared in constant time).

        >>> Access("abc").check("abc")
        >>> Access("abc").check(None)
        Traceback (most recent call last):
        ...
        deepscope.app.server.problems.TokenError: this server needs its token: ...
        """
        if self.token is None:
            return
        if not offered:
            raise TokenError(
                "this server needs its token: open the URL it printed (with ?token=...), or send "
                "'Authorization: Bearer <token>'"
            )
        if not hmac.compare_digest(offered.encode(), self.token.encode()):
            raise TokenError("wrong token: use the one the server printed when it started")


def inside(root: Path, path: str | Path) -> Path:
    """``path`` (relative paths are taken relative to ``root``) resolved, or :class:`ForbiddenPathError` when
    it lies outside ``root`` (symbolic links and '..' are resolved first).

    >>> inside(Path("/tmp/ws"), "a/b") == Path("/tmp/ws/a/b").resolve()
    True
    >>> inside(Path("/tmp/ws"), "../etc")
    Traceback (most recent call last):
    ...
    deepscope.app.server.problems.ForbiddenPathError: workspace path '../etc' is outside ...
    """
    root = Path(root).resolve()
    given = Path(path).expanduser()
    resolved = (given if given.is_absolute() else root / given).resolve()
    if resolved != root and root not in resolved.parents:
        raise ForbiddenPathError(
            f"workspace path {str(path)!r} is outside {root}, the directory this server opens workspaces in; "
            "give a path inside it, or restart the server with --workspace set to a directory holding it"
        )
    return resolved
