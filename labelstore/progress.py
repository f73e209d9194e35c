"""Progress on stderr: a tqdm bar in a terminal, plain log lines anywhere else (a file, a pipe, CI).

    bar = progress_bar(total=n, unit="view", desc="teach", disable=not progress)   # tqdm's arguments

Outside a terminal (stderr not a tty) the bar writes one line, without `\\r`, each time the count
crosses another 10 % of the total (or every 60 s, whichever comes first; every 60 s without a total)
and a last line when it closes:

    teach-classification:  50% 4096/8192 view [00:12<00:12, 341.3view/s]
"""

from __future__ import annotations

import math
import sys
import time

from tqdm import tqdm

__all__ = ["LogLines", "is_terminal", "progress_bar"]

LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class LogLines(tqdm):
    """tqdm writing whole lines: at every `step` of the total (a fraction) or `every` seconds."""

    def __init__(self, *args, step: float = 0.1, every: float = 60.0, **kwargs):
        self._step, self._every = step, every
        self._next, self._last_t, self._last_n = step, time.monotonic(), 0
        total = kwargs.get("total")
        if total is None and args and hasattr(args[0], "__len__"):
            total = len(args[0])
        kwargs.setdefault("bar_format", LINE_FORMAT if total else LINE_FORMAT_NO_TOTAL)
        kwargs["mininterval"] = 0  # tqdm asks display() at every update; display writes only when a line is due
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg is not None:  # tqdm clearing its line (close, nested bars): a log has nothing to clear
            return False
        now = time.monotonic()
        frac = self.n / self.total if self.total else 0.0
        due = (self.total and frac >= self._next) or now - self._last_t >= self._every
        if due and self.n != self._last_n:
            self._line(now, frac)
        return True

    def _line(self, now: float, frac: float) -> None:
        if self.total:
            self._next = (math.floor(frac / self._step + 1e-9) + 1) * self._step
        self._last_t, self._last_n = now, self.n
        self.fp.write(str(self) + "\n")
        self.fp.flush()

    def close(self):
        if not self.disable and self.n != self._last_n:
            self._line(time.monotonic(), self.n / self.total if self.total else 0.0)
        self.leave = False  # tqdm's own closing would clear the line with '\r' or end it with '\n'
        super().close()


def progress_bar(*args, file=None, **kwargs) -> tqdm:
    """tqdm(*args, **kwargs) on `file` (default stderr) when it is a terminal, else LogLines."""
    file = sys.stderr if file is None else file
    cls = tqdm if is_terminal(file) else LogLines
    return cls(*args, file=file, **kwargs)


def dask_progress(desc: str = "inspect", file=None):
    """dask's ProgressBar in a terminal; elsewhere one line per 10 % of each computation's tasks."""
    from dask.diagnostics import ProgressBar
    from dask.utils import format_time

    file = sys.stderr if file is None else file
    if is_terminal(file):
        return ProgressBar(out=file)

    class _Lines(ProgressBar):
        def _start(self, dsk):
            self._next = 0.1
            super()._start(dsk)

        def _draw_bar(self, frac, elapsed):
            if frac >= self._next or frac >= 1.0:
                self._next = (math.floor(frac * 10 + 1e-9) + 1) / 10
                self._file.write(f"{desc}: {int(100 * frac):3d}% of the tasks [{format_time(elapsed)}]\n")
                self._file.flush()

        def _finish(self, dsk, state, errored):
            self._running = False
            self._timer.join()
            if not errored:
                self._draw_bar(1.0, default_timer() - self._start_time)

    from timeit import default_timer

    return _Lines(out=file)
