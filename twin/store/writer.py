"""The fleet's side of the derived-row writer process (:mod:`twin.store.writer_process`).

The fleet sends each logged batch as one compact message: its log offset, arrival time, the
batch's wire payload (or, when that cannot stand for the samples, the samples re-packed),
one outcome code per sample and the state transitions. The writer process builds the rows
and writes them; it answers with the sequence number of the newest message it committed,
its counters and its log events (re-emitted here, so the fleet's log has them).

Backpressure: at most ``queue_batches`` messages are in flight (sent, not yet committed);
:meth:`Writer.wait_for_room` waits for room, then raises :class:`StoreBusy`. Messages in
flight are kept here, so a writer process that dies is restarted and sent them again (writes
are idempotent); one that keeps dying (``max_restarts`` within ``restart_window_s``) fails
the store: ``ingest`` then raises :class:`StoreUnavailable`, and so does ``flush``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Final

import msgpack
import structlog

from supervisors import record_restart
from twin.core.errors import TwinError
from twin.store.writer_process import BATCH, CLOSE, FLUSH, HEADER, ROWS

log = structlog.get_logger("twin.store")

SCRIPT: Final = Path(__file__).with_name("writer_process.py")
_F_SETPIPE_SZ: Final = 1031          # Linux: a pipe's capacity
_PIPE_BYTES: Final = 1 << 20         # the default ceiling for unprivileged processes


class StoreBusy(TwinError):
    """The store's writer is behind; the batch was not accepted (retry later)."""


class StoreUnavailable(TwinError):
    """The database could not be reached in time; the batch was not accepted."""


def _frame(message: Any) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True, default=repr)
    return HEADER.pack(len(body)) + body


def _grow_pipe(fd: int) -> None:
    """A bigger pipe lets batches queue in the kernel while the writer is inside a write."""
    with contextlib.suppress(OSError):   # not Linux, or a lower limit: the default works
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)


class Writer:
    """Starts, feeds, watches and stops one writer process."""

    def __init__(self, config: dict[str, Any], *, queue_batches: int, max_restarts: int = 3,
                 restart_window_s: float = 60.0) -> None:
        self.queue_batches = queue_batches
        self.written_rows = 0
        self.writes = 0
        self.write_seconds = 0.0
        self.retries = 0
        self.failed_rows = 0          # derived rows the database refused for good
        self.restarts = 0
        self._config = config
        self._max_restarts = max_restarts
        self._restart_window_s = restart_window_s
        self._restarted_at: tuple[float, ...] = ()       # recent failure times
        self._cond = threading.Condition()     # guards the counters, _acked and _unacked
        self._send_lock = threading.Lock()     # one writer of frames; guards _proc, _sent
        self._sent = 0                         # sequence number of the newest message sent
        self._acked = 0                        # ... of the newest one committed
        self._unacked: dict[int, bytes] = {}   # frames in flight, to send a restarted writer
        self._failure: str | None = None
        self._closing = False
        self._closed = False
        self._proc: subprocess.Popen[bytes] | None = None
        with self._send_lock:
            self._start()

    # -- the process --------------------------------------------------------------------------

    def _start(self) -> None:
        """Start a writer process and send it everything in flight (holding _send_lock)."""
        proc = subprocess.Popen([sys.executable, "-P", str(SCRIPT)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None
        _grow_pipe(proc.stdin.fileno())
        _grow_pipe(proc.stdout.fileno())
        self._proc = proc
        threading.Thread(target=self._read, args=(proc, proc.stdout),
                         name="twin-store-writer-acks", daemon=True).start()
        with self._cond:
            frames = list(self._unacked.values())
        for frame in [_frame(self._config), *frames,
                      *([_frame([CLOSE])] if self._closing else [])]:
            self._write(proc, frame)

    @property
    def pid(self) -> int:
        """The writer process's id (it changes when the process is restarted)."""
        assert self._proc is not None
        return self._proc.pid

    @staticmethod
    def _write(proc: subprocess.Popen[bytes], frame: bytes) -> None:
        assert proc.stdin is not None
        view = memoryview(frame)
        try:
            while view:
                view = view[os.write(proc.stdin.fileno(), view):]
        except (OSError, ValueError):      # a broken pipe, or closed by the reader thread
            pass        # it died: the reader thread restarts it and sends the frame again

    def _read(self, proc: subprocess.Popen[bytes], stream: IO[bytes]) -> None:
        """Acknowledgements, until the process ends; then restart it if it died."""
        try:
            while len(header := stream.read(HEADER.size)) == HEADER.size:
                (size,) = HEADER.unpack(header)
                body = stream.read(size)
                if len(body) != size:
                    break
                self._absorb(msgpack.unpackb(body, raw=False, strict_map_key=False))
        except (OSError, ValueError) as error:
            log.error("store_writer_unreadable", reason=repr(error)[:300])
        code = proc.wait()
        stream.close()
        if proc.stdin is not None:
            proc.stdin.close()
        with self._cond:
            done = self._closing and self._acked >= self._sent and code == 0
            if done or proc is not self._proc:
                self._cond.notify_all()
                return
        self._died(code)

    def _absorb(self, message: list[Any]) -> None:
        seq, rows, writes, seconds, retries, failed, logs = message
        for level, event, fields in logs:
            getattr(log, level)(event, **fields)
        with self._cond:
            self.written_rows += rows
            self.writes += writes
            self.write_seconds += seconds
            self.retries += retries
            self.failed_rows += failed
            if seq > self._acked:
                self._acked = seq
                unacked = self._unacked
                while unacked and (first := next(iter(unacked))) <= seq:
                    del unacked[first]
            self._cond.notify_all()

    def _died(self, code: int) -> None:
        reason = f"the store's writer process exited with code {code}"
        with self._send_lock:              # one restart at a time
            # the same restart intensity as every supervisor: at most max_restarts in the window
            self._restarted_at, exceeded = record_restart(
                self._restarted_at, time.monotonic(), self._max_restarts, self._restart_window_s)
            if exceeded:
                restarts = len(self._restarted_at) - 1
                log.error("store_writer_failed", reason=reason, restarts=restarts)
                with self._cond:
                    self._failure = (f"{reason}, after {restarts} restarts within "
                                     f"{self._restart_window_s:g} s; derived rows are not "
                                     "written")
                    self._cond.notify_all()
                return
            with self._cond:
                in_flight = len(self._unacked)
            log.error("store_writer_restarted", reason=reason, resent_batches=in_flight)
            self.restarts += 1
            self._start()

    # -- the fleet's calls ----------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """Why the writer is gone for good (it kept dying), or None while it runs."""
        return self._failure

    @property
    def depth(self) -> int:
        """Batches sent to the writer and not yet committed."""
        return self._sent - self._acked

    def wait_for_room(self, timeout_s: float) -> None:
        """Block until one more batch may be sent, or raise :class:`StoreBusy` (or
        :class:`StoreUnavailable` if the writer process is gone for good)."""
        with self._cond:
            self._check()
            if self._sent - self._acked < self.queue_batches:
                return
        self._hurry()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._sent - self._acked >= self.queue_batches:
                self._check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreBusy(f"the store's writer is {self._sent - self._acked} batches "
                                    f"behind; nothing of this batch was accepted, retry later")
                self._cond.wait(left)

    def put_batch(self, offset: int, received_at: float, payload: bytes, outcomes: bytes,
                  transitions: list[list[Any]]) -> None:
        """The rows of a logged batch: ``outcomes`` has a code for every sample of the wire
        ``payload``, in order."""
        self._send(BATCH, offset, received_at, payload, outcomes, transitions)

    def put_rows(self, offset: int, received_at: float, samples: list[list[Any]],
                 outcomes: bytes, transitions: list[list[Any]]) -> None:
        """The rows of samples given one by one (``[asset_id, ts, seq, signals]``)."""
        self._send(ROWS, offset, received_at, samples, outcomes, transitions)

    def _send(self, kind: int, *fields: Any) -> None:
        with self._send_lock:
            if self._closing:
                raise StoreUnavailable("the store is closed")
            self._sent += 1
            frame = _frame([kind, self._sent, *fields])
            with self._cond:
                self._unacked[self._sent] = frame
            assert self._proc is not None
            self._write(self._proc, frame)

    def _hurry(self) -> None:
        """Ask the writer to write what it holds now rather than at its interval."""
        with self._send_lock:
            if self._proc is not None and not self._closing:
                self._write(self._proc, _frame([FLUSH]))

    def _check(self) -> None:
        if self._failure is not None:
            raise StoreUnavailable(self._failure)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything sent so far is committed (True), or ``timeout_s`` passed
        (False)."""
        target = self._sent
        if self._acked >= target:
            return True
        self._hurry()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._acked < target:
                self._check()
                if deadline is None:
                    self._cond.wait()
                elif (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                else:
                    return False
        return True

    def close(self) -> None:
        """Write everything sent, then stop the process."""
        with self._send_lock:
            if self._closing:
                return
            self._closing = True
            proc = self._proc
            assert proc is not None
            self._write(proc, _frame([CLOSE]))
        with self._cond:
            while self._acked < self._sent and self._failure is None:
                self._cond.wait()
            failure = self._failure
        if failure is not None:
            log.error("store_closed_unwritten", reason=failure,
                      batches=self._sent - self._acked)
        with self._send_lock:
            proc = self._proc
        assert proc is not None
        proc.wait()
