"""What a driver shows while it runs: event lines, and on a terminal a live status line under them.

One :class:`ProgressView` per driver (:func:`sweeps.tune.runner._drive` opens it; :func:`current` hands it to the
teacher phase and to Tune's callback, which live in the same process). It has two outputs:

- :meth:`ProgressView.say`: an event (a trial started, an epoch, a teacher's epoch), one line each, stamped with the
  time since the driver started (the one clock of the view; the live line counts the same way);
- :meth:`ProgressView.status`: the state of the whole sweep (trials done / running / stopped of N, epochs done of the
  budget, elapsed, the time left, the best so far). On a terminal it is a live line at the bottom, redrawn in place
  (rich), so the best so far is shown once instead of on every line; in a log (not a terminal, ``CI``) it is printed
  as a plain line only when it changes in substance (a trial ended, a new best), never per epoch.

``L2D_PROGRESS=live|plain`` forces either; ``quiet`` prints nothing. Everything goes to stdout, where the driver's
lines always went (the data commands keep stdout for data; a sweep prints no data).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Iterator

from rich.text import Text

# Loaded late, inside the functions that use them: rich (imported where its absence is handled).

_current: "ProgressView | None" = None


def live_wanted(stream=None) -> bool:
    """Whether the live view is used: ``L2D_PROGRESS`` if set, else whether ``stream`` is a terminal (and not
    ``TERM=dumb``)."""
    forced = os.environ.get("L2D_PROGRESS", "").strip().lower()
    if forced in ("live", "plain"):
        return forced == "live"
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def clock(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` for an elapsed time."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def about(seconds: float) -> str:
    """``~4 min`` / ``~40 s`` / ``~2.5 h`` for an estimate."""
    if seconds >= 5400:
        return f"~{seconds / 3600:.1f} h"
    return f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{seconds:.0f} s"


class ProgressView:
    """Event lines plus a status that is live on a terminal and a plain line in a log (see the module's text)."""

    def __init__(self, quiet: bool = False, live: bool | None = None, stream=None):
        self.quiet = quiet
        self._stream = stream  # None: whatever sys.stdout is when a line is printed (pytest swaps it per test)
        self.live = (not quiet) and (live_wanted(self.stream) if live is None else live)
        self.started = time.time()
        self._status = ""
        self._said_status = ""
        self._lock = threading.Lock()
        self._live = None
        self._console = None
        self._handlers: list = []

    @property
    def stream(self):
        return self._stream or sys.stdout

    # -- the terminal's live line --------------------------------------------------------------------------------
    def _open_live(self) -> None:
        try:
            from rich.console import Console
            from rich.live import Live
        except ImportError:  # rich is a dependency; a stripped environment falls back to plain lines
            self.live = False
            return
        self._console = Console(file=self.stream, highlight=False, soft_wrap=True)
        view = self

        class _Line:  # re-rendered at every refresh: the elapsed time moves by itself
            def __rich__(self):
                text = view._status or "starting"
                return Text(
                    f"[{clock(time.time() - view.started)}] {text}", style="bold", overflow="ellipsis", no_wrap=True
                )

        terminal = {id(sys.stdout), id(sys.stderr), id(sys.__stdout__), id(sys.__stderr__)}
        self._live = Live(
            _Line(),
            console=self._console,
            refresh_per_second=2,
            transient=True,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._live.start()
        # Log records (Ray's, Tune's) go through handlers that hold the terminal's stream itself: point them at the
        # redirected one for the view's life, so that they scroll above the live line instead of through it.
        self._handlers = []
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", []):
                if (
                    isinstance(handler, logging.StreamHandler)
                    and not isinstance(handler, logging.FileHandler)
                    and id(handler.stream) in terminal
                ):
                    previous = handler.setStream(sys.stderr)
                    if previous is not None:
                        self._handlers.append((handler, previous))

    def close(self) -> None:
        """Stop the live line; its last state stays on the screen as one plain line."""
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None
                for handler, stream in self._handlers:
                    handler.setStream(stream)
                self._handlers = []
                if self._status:
                    self._print(f"[{self.elapsed()}] {self._status}")

    def __enter__(self) -> "ProgressView":
        if self.live:
            self._open_live()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- output ----------------------------------------------------------------------------------------------------
    def _print(self, line: str) -> None:
        if self._console is not None and self._live is not None:
            self._console.print(line, markup=False, highlight=False, emoji=False)
        else:
            print(line, file=self.stream, flush=True)

    def say(self, text: str, stamp: bool = True) -> None:
        """An event: one line (above the live line on a terminal)."""
        if self.quiet:
            return
        with self._lock:
            self._print(f"[{self.elapsed()}] {text}" if stamp else text)

    def status(self, text: str, changed: bool = True) -> None:
        """The sweep's state. Live: redrawn in place. Plain: printed when ``changed`` (the caller says whether
        something other than the clock moved: a trial ended, a new best) and different from the last one printed."""
        if self.quiet:
            return
        with self._lock:
            self._status = text
            if self._live is not None:
                self._live.refresh()
                return
            if changed and text != self._said_status:
                self._said_status = text
                self._print(f"[{self.elapsed()}] {text}")

    def elapsed(self) -> str:
        """The one clock of a driver's lines: the time since it started (``run.json`` holds the wall times)."""
        return clock(time.time() - self.started)


def current() -> ProgressView:
    """The driver's view (a plain one when none is open: a callback used outside a driver, in a test)."""
    global _current
    if _current is None:
        _current = ProgressView()
    return _current


@contextlib.contextmanager
def opened(quiet: bool = False, live: bool | None = None) -> Iterator[ProgressView]:
    """Open the driver's view for the ``with`` block (nested drivers share the outer one)."""
    global _current
    if _current is not None and getattr(_current, "_open", False):
        yield _current
        return
    view = ProgressView(quiet=quiet, live=live)
    view._open = True
    previous, _current = _current, view
    try:
        with view:
            yield view
    finally:
        _current = previous
