"""Faults of a scale-out worker: is an exception a lost connection, exponential backoff until the
storage answers again, and the study-lock timer (storage overhead the engine's timers miss)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from common.errors import TierHpoError
from common.redact import redact
from training.search import storage as sc


def is_connection_loss(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause/context chain) says a database or tracking server went away."""
    import optuna.exceptions
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                                optuna.exceptions.StorageInternalError, ConnectionError)):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        text = str(current)
        if type(current).__name__ == "MlflowException" and ("Max retries exceeded" in text
                                                           or "Connection refused" in text):
            return True  # the MLflow client already retried with its own backoff
        current = current.__cause__ or current.__context__
    return False


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter between reconnection attempts."""

    tries: int = 8
    first_s: float = 1.0
    max_s: float = 60.0

    def delays(self) -> Iterator[float]:
        for attempt in range(self.tries):
            base = min(self.max_s, self.first_s * 2 ** attempt)
            yield base * random.uniform(0.5, 1.0)  # jitter: workers do not reconnect in lockstep


def wait_for_storage(url: str, backoff: Backoff, echo: Callable[[str], None], why: str) -> None:
    """Probe the storage until it answers; raise ``TierHpoError`` once ``backoff`` is exhausted."""
    last = why
    for delay in backoff.delays():
        echo(f"storage {redact(url)} unavailable ({last}); retrying in {delay:.1f} s")
        time.sleep(delay)
        try:
            sc.check_storage_reachable(url)
            return
        except sc.StorageUnavailable as exc:
            last = str(exc)
    raise TierHpoError(
        f"lost the study storage {redact(url)} and it did not come back after {backoff.tries} tries "
        f"({last}); the study is intact: its running trials are re-queued by heartbeat, run the same "
        "command again when the database is back"
    )


class LockTimer:
    """Seconds spent taking and giving back the study lock (storage overhead the engine's own
    timers do not see: it takes the lock before starting them)."""

    def __init__(self, factory: Callable[[], contextlib.AbstractContextManager]) -> None:
        self.factory, self.seconds, self.count = factory, 0.0, 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        start = time.perf_counter()
        with self.factory():
            self.seconds += time.perf_counter() - start
            self.count += 1
            try:
                yield
            finally:
                released = time.perf_counter()
        self.seconds += time.perf_counter() - released  # not reached on an exception: fine for a timer


def storage_down(url: str) -> bool:
    try:
        sc.check_storage_reachable(url)
    except sc.StorageUnavailable:
        return True
    except TierHpoError:
        return False
    return False
