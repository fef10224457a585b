"""Ctrl-C and SIGTERM in a driver (run, resume, extend): the sweep stops cleanly and says it was interrupted.

Ray Tune answers the first SIGINT inside ``Tuner.fit()`` itself: it stops the trials, saves the experiment and
*returns normally*, after putting back the handler it found. Left alone, a driver would take that return for the end
of the sweep (exit status 0, "sweep finished", ``export`` next). :class:`Interrupts` is the handler Tune finds:

- outside ``fit`` (Ray starting, the teacher phase, the reconcile): the first signal raises :class:`SweepInterrupted`
  at once;
- inside ``fit`` a SIGINT goes to Tune's handler (wrapped at Tune's first step so that it is recorded), which stops
  the experiment gracefully and hands SIGINT back to this one; :meth:`Interrupts.after_fit` sees that and raises
  :class:`SweepInterrupted` once Tune has saved; when the same Ctrl-C reached a trial's workers and ``fit`` raises
  instead, :meth:`Interrupts.after_error` reads that error as the interruption it is;
- SIGTERM (``kill``, a scheduler's preemption) inside ``fit`` is passed to Tune's handler as if it were a SIGINT,
  so it too stops gracefully;
- a second signal while the first is being handled stops at once (``KeyboardInterrupt`` out of ``fit``).

The command line turns :class:`SweepInterrupted` into exit status 130 (SIGINT) or 143 (SIGTERM) and the
``l2d-sweep resume PATH`` line; ``run.json`` records ``interrupted (SIGINT)``.
"""

from __future__ import annotations

import signal
import threading

#: The exit status of a command stopped by each signal (128 + its number, as a shell reports it).
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class SweepInterrupted(KeyboardInterrupt):
    """The driver was stopped by a signal (the sweep is resumable). ``signum``: which one."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted ({signal.Signals(signum).name})")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS.get(self.signum, 130)


class Interrupts:
    """The driver's SIGINT and SIGTERM handler while it runs (a context manager; a no-op outside the main thread,
    where Python cannot install handlers: a notebook's worker thread, say)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._active = False

    def __enter__(self) -> Interrupts:
        global _current
        _current = self
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_STATUS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
            self._active = True
        return self

    def __exit__(self, *exc) -> None:
        global _current
        if _current is self:
            _current = None
        if self._active:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._active = False

    def reinstall(self) -> None:
        """Take SIGTERM back after ``ray.init``: Ray's core worker installs a handler of its own (it prints a stack
        and aborts the process), which would leave a sweep stopped by SIGTERM unrecorded."""
        if self._active:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            tune_handler = signal.getsignal(signal.SIGINT)
            if signum == signal.SIGTERM and callable(tune_handler) and tune_handler != self._handle:
                tune_handler(signal.SIGINT, frame)  # Tune is running: its graceful stop (it hands SIGINT back)
                return
            raise SweepInterrupted(signum)
        raise KeyboardInterrupt  # the second signal: stop at once, whatever is being saved

    def watch_tune(self) -> None:
        """Called on the main thread at each of Tune's steps: when Tune's own SIGINT handler is in place, wrap it so
        that a SIGINT it handles is recorded here too (Tune's handler then stops the experiment as before). A trial
        whose workers got the same Ctrl-C (a terminal signals the whole process group) may make ``fit`` raise instead
        of returning: the record tells that error from a real one."""
        if not self._active:
            return
        handler = signal.getsignal(signal.SIGINT)
        if handler == self._handle or getattr(handler, "_l2d_wrapped", False) or not callable(handler):
            return

        def recorded(signum, frame, tune_handler=handler):
            if self.received is None:
                self.received = signum
            tune_handler(signum, frame)

        recorded._l2d_wrapped = True
        signal.signal(signal.SIGINT, recorded)

    def after_error(self, error: BaseException) -> None:
        """Call when ``Tuner.fit()`` raised: raises :class:`SweepInterrupted` (from ``error``) when a signal came
        first, so that a Ctrl-C reads as an interruption, not as a failure."""
        if self.received is not None and not isinstance(error, KeyboardInterrupt):
            raise SweepInterrupted(self.received) from error

    def after_fit(self) -> None:
        """Call when ``Tuner.fit()`` returned: raises :class:`SweepInterrupted` when a signal stopped it. Tune gives
        the SIGINT handler back only when its own handler ran (it keeps its own after a normal end), so this also
        catches a SIGINT that came before the driver could see it; either way this handler is put back."""
        if not self._active:
            return
        if signal.getsignal(signal.SIGINT) == self._handle and self.received is None:
            self.received = signal.SIGINT
        signal.signal(signal.SIGINT, self._handle)
        if self.received is not None:
            raise SweepInterrupted(self.received)


_current: Interrupts | None = None


def current() -> Interrupts | None:
    """The running driver's handler (None outside a driver)."""
    return _current


def after_fit() -> None:
    """:meth:`Interrupts.after_fit` of the running driver's handler (nothing outside a driver)."""
    if _current is not None:
        _current.after_fit()


def after_error(error: BaseException) -> None:
    """:meth:`Interrupts.after_error` of the running driver's handler (nothing outside a driver)."""
    if _current is not None:
        _current.after_error(error)


def watch_tune() -> None:
    """:meth:`Interrupts.watch_tune` of the running driver's handler (nothing outside a driver, or off the main
    thread)."""
    if _current is not None and threading.current_thread() is threading.main_thread():
        _current.watch_tune()
