"""Pages of GET /leases and GET /usage.

A page ends at a key (not an offset): a lease granted or a rollup taken meanwhile does not
shift the next page. The `continue` token is that key, tagged with the endpoint, in base64url
JSON."""

from __future__ import annotations

import base64
import binascii
import json
from operator import itemgetter
from typing import Any

from fastapi import Request
from starlette.responses import Response

from workers.core.lease import Lease

from . import schemas as S
from .errors import JSON, ApiError
from .inputs import no_constant

LIMIT_TEXT = f"at most this many items (default {S.PAGE_LIMIT}, at most {S.PAGE_LIMIT_MAX})"
CONTINUE_TEXT = "the next page: the token in the previous page's X-Continue (or Link) header"


def lease_key(lease: Any) -> list[Any]:
    """["leases", leased-at, id]: the order the worker lists leases in."""
    leased_at, lease_id = Lease.from_wire(lease).order if isinstance(lease, dict) else ("", "")
    return ["leases", str(leased_at), str(lease_id)]


def usage_key(row: Any) -> list[Any]:
    ts = row.get("ts") if isinstance(row, dict) else None
    return ["usage", float(ts) if isinstance(ts, int | float) else 0.0]


def make_token(key: list[Any]) -> str:
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_token(token: str | None, like: list[Any]) -> list[Any] | None:
    """The key a `continue` token carries; 422 unless it is one of this endpoint's."""
    if token is None:
        return None
    bad = ApiError.invalid("continue", "is not a token from this endpoint's X-Continue or "
                           "Link header")
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)),
                         parse_constant=no_constant)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise bad from None
    if (not isinstance(key, list) or len(key) != len(like) or key[0] != like[0]
            or not all(type(a) is type(b) for a, b in zip(key, like, strict=True))):
        raise bad
    return key


def page(request: Request, items: list[Any], key: Any, limit: int,
         after: list[Any] | None, headers: dict[str, str]) -> Response:
    """At most `limit` items after `after`, in `key` order; a next link when there are more."""
    keyed = sorted(((key(x), x) for x in items), key=itemgetter(0))  # each key made once
    if after is not None:
        keyed = [(k, x) for k, x in keyed if k > after]
    shown = [x for _, x in keyed[:limit]]
    if len(keyed) > limit:
        token = make_token(keyed[limit - 1][0])
        url = request.url.include_query_params(**{"continue": token})
        headers = {**headers, "X-Continue": token,
                   "Link": f'<{url.path}?{url.query}>; rel="next"'}
    return JSON(shown, headers=headers)
