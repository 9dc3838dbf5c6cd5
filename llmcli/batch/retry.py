"""Which failures are worth asking again, how often, and how long the server asked us
to wait (``Retry-After``)."""

from __future__ import annotations

from llmcli.errors import ProviderError

__all__ = ["FAILURE_ATTEMPTS", "MAX_BACKOFF_S", "RATE_LIMIT_ATTEMPTS", "RETRY_STATUSES",
           "retryable"]


#: HTTP statuses worth asking again (after a pause): rate limits, overload, gateway trouble.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
#: Attempts per line: rate limits back off patiently; a server that is down is given up on
#: sooner (its other lines fail over to the group's other endpoints meanwhile).
RATE_LIMIT_ATTEMPTS = 8
FAILURE_ATTEMPTS = 3
MAX_BACKOFF_S = 30.0


def _causes(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found and len(found) < 8:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _retry_after(exc: BaseException) -> float | None:
    """The server's ``Retry-After`` (or ``retry-after-ms``), when an SDK error in the chain
    still holds the HTTP response (no SDK is imported: any ``.response.headers`` will do)."""
    for cause in _causes(exc):
        headers = getattr(getattr(cause, "response", None), "headers", None)
        if headers is None:
            continue
        try:
            if headers.get("retry-after-ms") is not None:
                return float(headers["retry-after-ms"]) / 1000
            if headers.get("retry-after") is not None:
                return float(headers["retry-after"])
        except (TypeError, ValueError):
            return None
    return None


def retryable(exc: BaseException, attempt: int) -> tuple[bool, float | None]:
    """Whether to ask again after ``exc`` (this line's ``attempt``-th failure), and the
    server's ``Retry-After`` when it sent one. Asking again cannot help after a bad option,
    a 400 or a missing key; it can after a rate limit, an overload or a transport failure."""
    provider = [c for c in _causes(exc) if isinstance(c, ProviderError)]
    if not provider:
        return False, None
    statuses = {c.status for c in provider if c.status is not None}
    rate_limited = 429 in statuses
    # A provider error with no HTTP status is the transport: refused, reset, timed out.
    transient = rate_limited or bool(statuses & RETRY_STATUSES) or not statuses
    limit = RATE_LIMIT_ATTEMPTS if rate_limited else FAILURE_ATTEMPTS
    if not transient or attempt >= limit:
        return False, None
    return True, _retry_after(exc) if rate_limited else None
