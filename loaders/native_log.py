"""DALI's image decoders (nvImageCodec) print log lines of their own, such as a red
`[ERROR] [jpeg_parser] Invalid marker`, straight to file descriptor 2, from DALI's threads, whenever they
meet a broken file, and at a level that cannot be lowered past errors (DALI_NVIMGCODEC_LOG_LEVEL stops at 1).
The DALI loader names the broken file in one message of its own, so while a DALI pass runs, fd 2 goes
through a pipe: lines in nvImageCodec's format are held back, everything else is passed on at once. The
loader claims the held lines when it handles a failure (and folds them into its message where they add
anything); lines nobody claimed are written out when the pass ends."""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import select
import sys
import threading

# "\x1b[0;31m[ERROR] \x1b[0m[jpeg_parser] Invalid marker": a severity, then the reporting module.
NATIVE_LINE = re.compile(rb"^(?:\x1b\[[0-9;]*m)?\[(?:FATAL|ERROR|WARNING|INFO|DEBUG|TRACE)\] ?"
                         rb"(?:\x1b\[[0-9;]*m)?\[[\w .:-]+\] ")
ANSI = re.compile(rb"\x1b\[[0-9;]*m")
SYNC = b"\x00feed-fast-native-log-sync\n"  # written into the pipe: everything before it has been sorted
PARTIAL_WAIT_S = 0.05  # a partial line that may be a native one waits this long for its end


class _Session:
    """One redirection of fd 2: the pipe, the thread sorting its lines, the lines held back."""

    def __init__(self):
        sys.stderr.flush()
        self.read_fd, self.write_fd = os.pipe()
        self.saved_fd = os.dup(2)
        os.dup2(self.write_fd, 2)
        self.held: list[str] = []
        self.syncs = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._sort, name="native-log", daemon=True)
        self.thread.start()

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(self.saved_fd, data):]

    def _line(self, line: bytes) -> None:
        if line == SYNC:
            self.syncs.release()
        elif NATIVE_LINE.match(line):
            self.held.append(ANSI.sub(b"", line).decode(errors="replace").strip())
        else:
            self._write(line)

    def _sort(self) -> None:
        pending = b""
        while True:
            if pending and not select.select([self.read_fd], [], [], PARTIAL_WAIT_S)[0]:
                self._write(pending)  # a partial line that stayed partial: not one of nvImageCodec's
                pending = b""
                continue
            chunk = os.read(self.read_fd, 65536)
            if not chunk:  # every writer is gone (processes started during the pass included)
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._line(line + b"\n")
            if pending and not pending.startswith((b"\x1b[", b"[", b"\x00")):
                self._write(pending)  # the start of an ordinary line: no reason to wait for its end
                pending = b""
        self._write(pending)
        os.close(self.read_fd)
        os.close(self.saved_fd)

    def sync(self) -> None:
        """Return once every byte written to the pipe so far has been sorted."""
        with contextlib.suppress(OSError):
            os.write(self.write_fd, SYNC)
            self.syncs.acquire(timeout=5)

    def close(self) -> None:
        """fd 2 back as it was; everything written before is passed on (and unclaimed native lines after it).
        The sorting thread lives on until the last writer is gone: a process started during the pass holds
        the pipe as its stderr, and closing it under that process would break its writes."""
        sys.stderr.flush()
        self.sync()
        os.dup2(self.saved_fd, 2)
        held, self.held = self.held, []
        with contextlib.suppress(OSError):
            os.write(2, "".join(f"{line}\n" for line in held).encode())
        os.close(self.write_fd)  # the thread closes its own ends once it reads the end of the pipe


_lock = threading.Lock()
_session: _Session | None = None
_users = 0


@contextlib.contextmanager
def holding_native_logs():
    """While open (nested or overlapping uses share one redirection), nvImageCodec's lines are held back."""
    global _session, _users
    with _lock:
        if _session is None:
            try:
                _session = _Session()
            except (OSError, ValueError, AttributeError):  # no usable fd 2 (closed, or no sys.stderr)
                _session = None
        _users += _session is not None
        mine = _session
    try:
        yield
    finally:
        if mine is not None:
            with _lock:
                _users -= 1
                if _users == 0 and _session is mine:
                    _session = None
                    mine.close()


def claim_native_logs() -> list[str]:
    """The native lines held back so far (ANSI colours removed), no longer to be written out."""
    with _lock:
        if _session is None:
            return []
        _session.sync()
        lines, _session.held = _session.held, []
        return lines


@atexit.register
def _restore_at_exit() -> None:
    """A pass left open at exit (an epoch stopped by a signal, its iterator never closed): write out what
    went through the pipe before the interpreter goes."""
    global _session, _users
    with _lock:
        if _session is not None:
            _session.close()
            _session, _users = None, 0
