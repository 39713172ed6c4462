"""Domain errors that carry their HTTP status; web/ renders them as {"error", "detail"}."""


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class BadRequest(DomainError):
    """A request that cannot be understood (the base class's 400, named for readability)."""


class NotAcceptable(DomainError):
    status = 406
    code = "not_acceptable"


class UnsupportedMediaType(DomainError):
    status = 415
    code = "unsupported_media_type"


class Invalid(DomainError):
    status = 422
    code = "invalid"


class NotAuthenticated(DomainError):
    status = 401
    code = "not_authenticated"


class NotPermitted(DomainError):
    status = 403
    code = "not_permitted"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class Gone(DomainError):
    status = 410
    code = "gone"


class PayloadTooLarge(DomainError):
    status = 413
    code = "payload_too_large"


class Locked(DomainError):
    status = 423
    code = "locked"


class TooManyRequests(DomainError):
    status = 429
    code = "too_many_requests"


class Unavailable(DomainError):
    status = 503
    code = "unavailable"


def passes(check, *args) -> bool:
    """Whether `check(*args)` goes through without a domain refusal: a page asks this to show
    or hide a control that the action itself will check again."""
    try:
        check(*args)
    except DomainError:
        return False
    return True
