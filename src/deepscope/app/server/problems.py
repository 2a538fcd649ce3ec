"""The server's own errors, and the HTTP status of every deepscope error.

Every error a route answers is JSON, ``{"error": "<one sentence>", "kind": "<class name>"}``: deepscope's errors
with their own message and class, a bug as a 500 that names only the exception class (the traceback goes to
the server log, never to the client).
"""

from __future__ import annotations

from deepscope.attribution.base import MethodError
from deepscope.attribution.targets import TargetError
from deepscope.errors import (
    DeepscopeError,
    ImageError,
    LayerNotFoundError,
    ModelError,
    SettingError,
    SpecError,
    UnitError,
    WeightsNotFoundError,
    WorkspaceError,
)


class ServerError(DeepscopeError):
    """Base of the errors only the workbench server raises."""


class NotFoundError(ServerError, LookupError):
    """An unknown model, image, job, blob or route argument that names nothing the server holds."""


class NotComputedError(ServerError, LookupError):
    """A result (a layout...) that has not been computed yet: start its job first."""


class TokenError(ServerError, PermissionError):
    """A request without the token, or with a wrong one, to a server bound beyond loopback."""


class ForbiddenPathError(ServerError, PermissionError):
    """A workspace path outside the directories the server may open."""


class ForbiddenSpecError(ServerError, PermissionError):
    """A model spec that would run code or read files named over HTTP (``python:``, ``torchscript:``)."""


class UploadTooLargeError(ServerError, ValueError):
    """An upload over the size or pixel cap."""


class WorkspaceNotReadyError(ServerError, RuntimeError):
    """A route that needs the model's scan, asked before the scan is done (or for a model given no data)."""


class UnknownCompareError(ServerError, ValueError):
    """Two workspaces that cannot be compared (other data, or not scanned)."""


# Most specific first: the first class an error is an instance of gives its status.
STATUS: list[tuple[type[BaseException], int]] = [
    (TokenError, 401),
    (ForbiddenPathError, 403),
    (ForbiddenSpecError, 403),
    (UploadTooLargeError, 413),
    (NotFoundError, 404),
    (NotComputedError, 404),
    (LayerNotFoundError, 404),
    (UnitError, 404),
    (WeightsNotFoundError, 404),
    (WorkspaceNotReadyError, 409),
    (WorkspaceError, 409),
    (ImageError, 422),
    (MethodError, 400),
    (TargetError, 400),
    (SpecError, 400),
    (ModelError, 400),
    (SettingError, 400),
    (UnknownCompareError, 400),
    (DeepscopeError, 400),
]


def status_of(error: DeepscopeError) -> int:
    """The HTTP status of a deepscope error.

    >>> status_of(LayerNotFoundError("no layer 'conv9'")), status_of(ImageError("not an image"))
    (404, 422)
    """
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 400


def error_body(error: BaseException) -> dict[str, str]:
    """The JSON body of an error answer: deepscope's message and class, or for anything else a sentence that
    names only the exception class.

    >>> error_body(NotFoundError("no model 'x'"))
    {'error': "no model 'x'", 'kind': 'NotFoundError'}
    >>> error_body(KeyError("secret"))["kind"]
    'InternalError'
    """
    if isinstance(error, DeepscopeError):
        message = str(error).strip() or type(error).__name__
        return {"error": message, "kind": type(error).__name__}
    return {
        "error": f"internal error ({type(error).__name__}); the server log has the traceback",
        "kind": "InternalError",
    }
