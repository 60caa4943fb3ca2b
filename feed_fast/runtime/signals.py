"""Stop signals: SIGINT, SIGTERM, SIGUSR1 (what SLURM's `--signal=USR1@T` sends before a time limit) and one more
of the config's choosing (`train.stop_signal`) ask the trainer to finish its current optimizer step, write last.pt
and exit with status 128 + the signal's number (SIGINT 130, SIGTERM 143, SIGUSR1 138); the trainer polls
`requested` between steps. A second SIGINT stops at once (KeyboardInterrupt). SIGXFSZ (a file-size limit,
`ulimit -f`, reached) is ignored, so the write fails with EFBIG and is reported naming the file, as a full disk is,
instead of killing the process mid-write. Handlers are restored on exit."""
from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only type checkers read this (typing.Self needs Python 3.11; we support 3.10)
    from typing_extensions import Self

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")  # always handled; train.stop_signal adds one
UNCATCHABLE = ("SIGKILL", "SIGSTOP")
RESERVED = ("SIGXFSZ", "SIGCHLD", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGPIPE")  # taken, or not a request


def stop_signal_number(name: str) -> int:
    """The number of a signal a run may stop on, by name (`SIGUSR2`, or `USR2`); ValueError naming the choices."""
    full = name if name.upper().startswith("SIG") else f"SIG{name}"
    full = full.upper()
    number = getattr(signal.Signals, full, None) if full.isidentifier() else None
    if number is None or full in UNCATCHABLE or full in RESERVED:
        why = ("cannot be caught" if full in UNCATCHABLE else "is not a stop request" if number
               else "is not a signal here")
        raise ValueError(f"{name!r} {why}; give a signal such as SIGUSR2, SIGHUP or SIGQUIT (SIGINT, SIGTERM "
                         "and SIGUSR1 always stop a run)")
    return int(number)


def exit_status(signal_name: str | None) -> int:
    """What `feed-fast train` exits with after a stop by that signal: the shell's 128 + N."""
    try:
        return 128 + int(signal.Signals[signal_name]) if signal_name else 130
    except KeyError:
        return 130


class GracefulStop:
    SIGNALS = tuple(signal.Signals[name] for name in STOP_SIGNALS)

    def __init__(self, extra: str | None = None) -> None:
        self.signals = self.SIGNALS + ((signal.Signals(stop_signal_number(extra)),) if extra else ())
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def signal_number(self) -> int:
        """The number of the signal received (0 for none): what the ranks agree on between steps."""
        return int(signal.Signals[self.signal_name]) if self.signal_name else 0

    def _handle(self, signum, _frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
            if hasattr(signal, "SIGXFSZ"):  # POSIX only
                self._previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
