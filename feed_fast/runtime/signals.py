"""SIGINT/SIGTERM: the first signal asks the trainer to finish its current step, write last.pt and exit;
the trainer polls `requested` between steps. SIGXFSZ (a file-size limit, `ulimit -f`, reached) is ignored, so
the write fails with EFBIG and is reported naming the file, as a full disk is, instead of killing the process
mid-write. Handlers are restored on exit."""
from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only type checkers read this (typing.Self needs Python 3.11; we support 3.10)
    from typing_extensions import Self


class GracefulStop:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, _frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            if hasattr(signal, "SIGXFSZ"):  # POSIX only
                self._previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
