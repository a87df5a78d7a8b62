"""What goes wrong with a mirror, and which of it a retry can help."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from ... import backoff

T = TypeVar("T")


class MirrorError(Exception):
    """The mirror could not be written or read (network, timeout, 5xx, busy, damaged data)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # HTTP status when the apiserver answered


class MirrorSuperseded(MirrorError):
    """The mirror already holds a newer seq of the same ledger; nothing was written.

    Not a failure: everything up to ``held`` (so up to ``seq`` too) is in the mirror. Another
    writer of the same ledger got there first; retrying this snapshot cannot succeed."""

    def __init__(self, where: str, seq: int, held: int) -> None:
        super().__init__(f"{where} already holds seq {held}, newer than this save's {seq}: "
                         "left as it is")
        self.seq = seq
        self.held = held


class MirrorTooLarge(MirrorError):
    """The snapshot does not fit even when sharded; nothing was written."""

    def __init__(
        self, message: str, *, encoded_bytes: int = 0, raw_bytes: int = 0, needed: int = 0
    ) -> None:
        super().__init__(message)
        self.encoded_bytes = encoded_bytes
        self.raw_bytes = raw_bytes
        self.needed = needed  # ConfigMaps (head included) the payload would need


def retryable(exc: BaseException) -> bool:
    """A MirrorError that a later attempt may not meet (not too large, not superseded)."""
    return isinstance(exc, MirrorError) and not isinstance(exc, MirrorTooLarge | MirrorSuperseded)


def retry_backoff(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base: float = backoff.BASE,
    cap: float = backoff.CAP,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, MirrorError, float], None] | None = None,
) -> T:
    """Call fn, retrying what ``retryable`` allows with jittered backoff; the last error is
    raised as it is."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            exc = state.outcome.exception()
            assert isinstance(exc, MirrorError)
            on_retry(state.attempt_number, exc, state.next_action.sleep)

    retrying = Retrying(stop=stop_after_attempt(attempts), wait=backoff.jittered(base, cap),
                        retry=retry_if_exception(retryable), sleep=sleep,
                        before_sleep=before_sleep, reraise=True)
    return retrying(fn)
