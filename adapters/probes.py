"""Probes of user-given sources (playlist detection, `POST /metadata`): bounded per request and
per account.

A probe is blocking yt-dlp work, so it runs in a thread; a thread cannot be killed, and
yt-dlp's socket timeout is per read, so a source that drips one byte every few seconds would
hold it for ever. `ProbePool` gives each probe a total deadline and really stops it there:
every socket the probe opened is shut down from the outside (the blocked read returns at once)
and no new request may start. Probes run on an executor of their own, never the loop's default
one that `/media`, sysinfo and storage reads use, and each account holds at most `share` of its
slots at once: past that, `ProbeBusy` (answered 429 with `Retry-After`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ProbeBusy(Exception):
    """The account (or the whole process) has no free probe slot; try again after a while."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProbeTimeout(Exception):
    """The probe did not finish within its deadline; it has been stopped."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"Source did not answer within {seconds:g} s")
        self.seconds = seconds


class Probe:
    """What one probe's thread is given: its deadline, a cancel flag and a register of sockets.

    The networking code (adapters/downloader.py `_guarded_connect`) registers every socket it
    opens with `opened`; `stop` (from any thread) sets the flag, so no new request starts, and
    shuts each socket down, so a read blocked on it returns at once.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic() value
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        # Duplicates of the sockets: TLS detaches the object we were handed, and shutdown(2)
        # on a duplicate ends the connection for every descriptor of it.
        self._sockets: list[socket.socket] = []

    def remaining(self) -> float:
        """Seconds left before the deadline (never below a small positive floor)."""
        return max(0.05, self.deadline - time.monotonic())

    def opened(self, sock: socket.socket) -> None:
        """Register a socket the probe just connected; one opened after `stop` is shut at once."""
        with self._lock:
            if not self.cancel.is_set():
                self._sockets.append(sock.dup())
                return
        _shut(sock)

    def stop(self) -> None:
        """No new request, and every open connection shut down (idempotent, any thread)."""
        with self._lock:
            self.cancel.set()
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)
            sock.close()

    def release(self) -> None:
        """Drop the duplicates once the probe's thread is done (its own sockets are closed)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class ProbePool:
    """A thread pool for probes with a per-account share and a total deadline per probe.

    `workers` threads at most; one account holds at most `share` of them. A slot is held until
    the probe's thread has really finished, not only until its request answered, so a stopped
    probe that takes a moment to unwind still counts against its account.
    """

    def __init__(self, *, workers: int, share: int) -> None:
        if workers < 1 or share < 1:
            raise ValueError("probe workers and share must be at least 1")
        self.workers = workers
        self.share = share
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spool-probe")
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    @property
    def busy(self) -> int:
        """Probe threads running now (stopped ones count until their thread has returned)."""
        with self._lock:
            return sum(self._held.values())

    def held_by(self, account_id: str) -> int:
        """Slots `account_id` holds now."""
        with self._lock:
            return self._held[account_id]

    def _admit(self, account_id: str, timeout: float) -> None:
        retry_after = max(1, math.ceil(timeout))
        with self._lock:
            if self._held[account_id] >= self.share:
                raise ProbeBusy(
                    f"Too many sources being read at once for this account "
                    f"(at most {self.share}); try again shortly",
                    retry_after=retry_after,
                )
            if sum(self._held.values()) >= self.workers:
                raise ProbeBusy(
                    "Too many sources being read at once; try again shortly",
                    retry_after=retry_after,
                )
            self._held[account_id] += 1

    def _free(self, account_id: str) -> None:
        with self._lock:
            self._held[account_id] -= 1
            if self._held[account_id] <= 0:
                del self._held[account_id]

    async def run(self, account_id: str, work: Callable[[Probe], T], *, timeout: float) -> T:
        """`work(probe)` on a probe thread; ProbeTimeout once `timeout` seconds have passed.

        ProbeBusy (before anything starts) when the account holds its whole share already.
        At the deadline, or when the caller goes away, the probe is stopped: its sockets shut
        and no new request started.
        """
        self._admit(account_id, timeout)
        probe = Probe(time.monotonic() + timeout)

        def call() -> T:
            try:
                return work(probe)
            finally:
                probe.release()

        try:
            future: Future[T] = self._executor.submit(call)
        except BaseException:
            self._free(account_id)
            raise
        future.add_done_callback(lambda _: self._free(account_id))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            raise ProbeTimeout(timeout) from None
        finally:
            probe.stop()

    def shutdown(self) -> None:
        """Stop taking probes; running ones end at their deadline (threads are not waited for)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
