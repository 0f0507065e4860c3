"""One exception hierarchy for edgeslm, mapped once to CLI exit codes.

Inner code raises the most specific class with a message that names the bad value and the
next step; it does not catch and rewrap. The CLI (and later the HTTP server) translate these
in exactly one place each, using the tables at the bottom of this module.
"""

from __future__ import annotations


class EdgeslmError(Exception):
    """Base of every error edgeslm raises on purpose.

    ``params`` names the library parameters the message speaks of, by their Python names
    ("max_size"); the CLI writes each as the flag that sets it ("--max-size"), so one message
    serves a Python caller and a shell user alike."""

    def __init__(self, message: str = "", *, params: str | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.params: tuple[str, ...] = (params,) if isinstance(params, str) else tuple(params)


class UsageError(EdgeslmError):
    """A command was called with arguments that cannot work together."""


class InvalidNameError(EdgeslmError):
    """A model name or reference breaks the naming rules."""


class InvalidModelFileError(EdgeslmError):
    """A model file failed validation; nothing was stored."""


class BundleError(InvalidModelFileError):
    """A bundle (``edgeslm bundle``) failed verification; nothing was imported."""


class InputFileError(EdgeslmError):
    """A path given by the user cannot be read (missing, a directory, no permission)."""


class OutputFileError(EdgeslmError):
    """A file or folder edgeslm was asked to write (a report, --output) cannot be written."""


class MissingExtraError(EdgeslmError):
    """An optional runtime that is not installed (the message names the pip command)."""


class ModelNotFoundError(EdgeslmError):
    """No model of that name in the store, the builtins or the catalogue."""


class ResponseNotFoundError(EdgeslmError):
    """A kept response (``previous_response_id``) that is unknown, expired or another key's."""


class StoreError(EdgeslmError):
    """The local store could not complete an operation; its previous state is kept."""


class IntegrityError(StoreError):
    """Content does not match the digest it was promised to have."""


class ConflictError(StoreError):
    """A name already stands for other content (a push, a pull from a remote)."""


class SourceError(EdgeslmError):
    """A remote or packaged model source could not deliver a model."""


class CatalogError(EdgeslmError):
    """A catalogue entry is malformed (a pinned file without a digest, a size or its parts)."""


class OfflineError(SourceError):
    """A network source was needed but no network (or hub) is reachable."""


class InvalidParameterError(EdgeslmError):
    """A generation or sampling parameter is outside its valid range."""


class ModelfileError(InvalidParameterError):
    """A Modelfile (or a create request's fields) is malformed; the message names the line."""


class ContextOverflowError(EdgeslmError):
    """The prompt does not fit the model's context window."""


class ChatTemplateError(EdgeslmError):
    """A model's chat template was refused: unsafe, too slow, too large or broken."""


class EngineError(EdgeslmError):
    """The inference engine could not load or run a model; the calling process is unharmed."""


class RunnerTimeoutError(EngineError):
    """A model runner or child process missed its deadline (loading, closing); it was stopped."""


class CapacityError(EdgeslmError):
    """Not now: no memory or slot for this request (the server answers 503; try again later)."""


class OverBudgetError(CapacityError):
    """A model's memory plan is larger than what it may use: waiting will not help (HTTP 507)."""


class AbortedError(EdgeslmError):
    """The user declined a confirmation prompt."""


class AuthenticationError(EdgeslmError):
    """No valid API key came with a request (HTTP 401)."""


class PermissionDeniedError(EdgeslmError):
    """The key's role, the Host or the Origin of a request may not do this (HTTP 403)."""


class RequestTooLargeError(EdgeslmError):
    """A request body over the server's limit (HTTP 413)."""


class UnsupportedMediaTypeError(EdgeslmError):
    """A request body that is not JSON (HTTP 415)."""


# Exit codes follow sysexits.h where one fits, so scripts can tell failures apart.
EXIT_CODES: dict[type[EdgeslmError], int] = {
    UsageError: 2,
    InvalidParameterError: 2,
    ModelfileError: 65,  # EX_DATAERR: the file is at fault
    ContextOverflowError: 65,
    ChatTemplateError: 65,
    EngineError: 70,  # EX_SOFTWARE
    RunnerTimeoutError: 75,  # EX_TEMPFAIL: the next try starts afresh
    InvalidNameError: 65,  # EX_DATAERR
    InvalidModelFileError: 65,
    InputFileError: 66,  # EX_NOINPUT
    OutputFileError: 73,  # EX_CANTCREAT
    ModelNotFoundError: 67,  # "no such model", like EX_NOUSER
    ResponseNotFoundError: 66,  # EX_NOINPUT
    MissingExtraError: 69,  # EX_UNAVAILABLE
    OfflineError: 69,  # EX_UNAVAILABLE
    SourceError: 69,
    CatalogError: 78,  # EX_CONFIG
    IntegrityError: 74,  # EX_IOERR
    ConflictError: 73,  # EX_CANTCREAT
    StoreError: 74,
    CapacityError: 75,  # EX_TEMPFAIL
    OverBudgetError: 69,  # EX_UNAVAILABLE: not on this machine, with this configuration
    AuthenticationError: 77,  # EX_NOPERM
    PermissionDeniedError: 77,
    RequestTooLargeError: 65,
    UnsupportedMediaTypeError: 65,
    AbortedError: 1,
    EdgeslmError: 1,
}


# The server's status for each error; the dialects (Ollama, OpenAI) only change the body's shape.
HTTP_STATUS: dict[type[EdgeslmError], int] = {
    UsageError: 400,
    InvalidParameterError: 400,
    ContextOverflowError: 400,
    ChatTemplateError: 400,
    InvalidNameError: 400,
    InvalidModelFileError: 422,
    InputFileError: 400,
    OutputFileError: 500,
    ModelNotFoundError: 404,
    ResponseNotFoundError: 404,
    MissingExtraError: 501,
    OfflineError: 503,
    SourceError: 502,
    CatalogError: 500,
    IntegrityError: 500,
    ConflictError: 409,
    StoreError: 500,
    EngineError: 500,
    RunnerTimeoutError: 503,
    CapacityError: 503,
    OverBudgetError: 507,  # Insufficient Storage: the request cannot be served as configured
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    RequestTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    AbortedError: 400,
    EdgeslmError: 500,
}


def error_named(kind: str, message: str) -> EdgeslmError:
    """An error reported by name from another process, as the same class here (else EngineError)."""
    cls = globals().get(kind)
    if not (isinstance(cls, type) and issubclass(cls, EdgeslmError)):
        cls = EngineError
    return cls(message)


def _nearest(error: EdgeslmError, table: dict[type[EdgeslmError], int], default: int) -> int:
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return default


def exit_code_for(error: EdgeslmError) -> int:
    """The CLI exit code of ``error``: the entry of its nearest class in ``EXIT_CODES``."""
    return _nearest(error, EXIT_CODES, 1)


def http_status_for(error: EdgeslmError) -> int:
    """The HTTP status of ``error``: the entry of its nearest class in ``HTTP_STATUS``."""
    return _nearest(error, HTTP_STATUS, 500)
