"""One error type per kind of failure, and the one table that maps each to an HTTP status.

Every layer raises these; the service turns them into `{"error": ..., "error_type": ...}` bodies.
Messages of 4xx errors are written for the caller and say how to fix the request; 5xx errors are
answered with a generic message and the details go to the log only.
"""

from __future__ import annotations


class BertserveError(Exception):
    """Base class. `error_type` is the stable, machine-readable name; `status` the HTTP answer."""

    error_type = "internal"
    status = 500


class ValidationError(BertserveError):
    """The request is well-formed JSON but asks for something the service cannot do."""

    error_type = "validation"
    status = 422


class TooManyInputsError(ValidationError):
    """More texts (items) in one request than BERTSERVE_MAX_TEXTS_PER_REQUEST (TEI's dialect: 413)."""


class InputTooLongError(ValidationError):
    """A text over a character limit, or over the model's window with truncate=false (TEI: 413)."""


class EmptyInputError(BertserveError):
    """Nothing to work on: an empty list or an empty text."""

    error_type = "empty"
    status = 400


class PayloadTooLargeError(BertserveError):
    error_type = "payload_too_large"
    status = 413


class UnauthorizedError(BertserveError):
    """No or a wrong API key on an inference route (BERTSERVE_API_KEY is set)."""

    error_type = "unauthorized"
    status = 401


class OverloadedError(BertserveError):
    error_type = "overloaded"
    status = 429


class UnknownModelError(BertserveError):
    """The request names a model the service does not serve (for that route)."""

    error_type = "unknown_model"
    status = 404


class NotFoundError(BertserveError):
    """Something the request names that is not here (a served model without a report)."""

    error_type = "not_found"
    status = 404


class NotReadyError(BertserveError):
    """No model for this task, or the service is still loading / shutting down."""

    error_type = "unavailable"
    status = 503


class ReloadError(BertserveError):
    """A reload could not be done (a new version fails its checksums, cannot be loaded): every model
    stays as it was; the message says which and how to fix it."""

    error_type = "reload_failed"
    status = 409


class TimeoutError_(BertserveError):
    error_type = "timeout"
    status = 504


class BackendError(BertserveError):
    """The runtime failed. Never shown to the caller beyond the generic 500 message."""

    error_type = "backend"
    status = 500


# Offline (CLI) errors: bad files, bad configuration, failed gates. Not served over HTTP.
class DataError(BertserveError):
    """A data file cannot be read; the message names the file and line."""

    error_type = "data"


class ConfigError(BertserveError):
    """An option or model directory is unusable; the message says which and how to fix it."""

    error_type = "config"


class ArtifactError(BertserveError):
    """A model artifact is missing files, has a bad metadata file, or fails its checksums."""

    error_type = "artifact"


class ParityError(BertserveError):
    """An exported variant answers differently from the PyTorch model beyond the allowed drop."""

    error_type = "parity"


class WeakModelError(BertserveError):
    """A trained model does no better than a constant answer; the message says what to try."""

    error_type = "weak_model"


class FitError(BertserveError):
    """A stage of `bertserve fit` failed; the message names the stage and what was kept."""

    error_type = "fit"


GENERIC_500 = "internal error; the server log has the details"
