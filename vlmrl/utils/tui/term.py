"""The only module that writes to the terminal: modes in, frames out, keys, size, restore.

Enter once (alternate screen, hidden cursor, autowrap off, cbreak input), write whole
frames with one locked `os.write` loop, and restore on every way out: `restore()` is
idempotent, safe from any thread, from atexit and from a signal handler. Signal handlers
can only be installed from the main thread (`install_signal_handlers` says whether it
did); elsewhere try/finally and atexit do the job. SIGKILL and native aborts cannot be
caught: the dashboard's first frames name `reset` as the cure.

No mouse, focus or keyboard protocols are ever enabled, so even an uncatchable death
leaves at worst the alternate screen and a hidden cursor behind.
"""
from __future__ import annotations

import atexit
import codecs
import os
import select
import signal
import sys
import termios
import threading
import tty
from types import MappingProxyType
from typing import Callable, List, Optional, Tuple

ENTER = "\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[0m\x1b[H\x1b[2J"
# End any half-open synchronized update first, so a frame cut short by a signal cannot
# leave the terminal holding its screen back.
LEAVE = "\x1b[?2026l\x1b[0m\x1b[?7h\x1b[?25h\x1b[?1049l"
RESET_HINT = "if the terminal is left garbled, type: reset"

# Escape sequences of the keys the dashboard uses, named as blessed names them.
_SEQ_KEYS = MappingProxyType({
    "\x1b[A": "KEY_UP", "\x1b[B": "KEY_DOWN", "\x1b[C": "KEY_RIGHT", "\x1b[D": "KEY_LEFT",
    "\x1bOA": "KEY_UP", "\x1bOB": "KEY_DOWN", "\x1bOC": "KEY_RIGHT", "\x1bOD": "KEY_LEFT",
    "\x1b[H": "KEY_HOME", "\x1b[F": "KEY_END", "\x1bOH": "KEY_HOME", "\x1bOF": "KEY_END",
    "\x1b[1~": "KEY_HOME", "\x1b[7~": "KEY_HOME", "\x1b[4~": "KEY_END", "\x1b[8~": "KEY_END",
    "\x1b[5~": "KEY_PGUP", "\x1b[6~": "KEY_PGDOWN", "\x1b[2~": "KEY_INSERT", "\x1b[3~": "KEY_DELETE",
    "\x1b[Z": "KEY_BTAB",
})
_CHAR_KEYS = MappingProxyType({"\x0c": "KEY_REDRAW", "\r": "KEY_ENTER", "\n": "KEY_ENTER", "\x7f": "KEY_BACKSPACE", "\x08": "KEY_BACKSPACE",
              "\t": "KEY_TAB"})


def parse_keys(data: str) -> List[str]:
    """Split terminal input into keys: printable characters as themselves, special keys
    by blessed-style name (KEY_LEFT, KEY_PGUP, ...); unknown sequences are dropped."""
    keys: List[str] = []
    i, n = 0, len(data)
    while i < n:
        ch = data[i]
        if ch == "\x1b":
            if i + 1 >= n:
                keys.append("KEY_ESCAPE")
                i += 1
                continue
            nxt = data[i + 1]
            if nxt in "[O":
                # CSI/SS3: parameters and intermediates, then one final byte 0x40..0x7e
                j = i + 2
                while j < n and not ("\x40" <= data[j] <= "\x7e"):
                    j += 1
                seq = data[i:j + 1]
                name = _SEQ_KEYS.get(seq)
                if name is None and nxt == "[" and seq[-1:] in "ABCDHF" and ";" in seq:
                    name = _SEQ_KEYS.get("\x1b[" + seq[-1])  # modified arrows: ESC [1;5C
                if name:
                    keys.append(name)
                i = j + 1
                continue
            keys.append("KEY_ESCAPE")  # ESC followed by a plain key (alt-key): take ESC alone
            i += 1
            continue
        if ch in _CHAR_KEYS:
            keys.append(_CHAR_KEYS[ch])
        elif ch.isprintable():
            keys.append(ch)
        i += 1
    return keys


def _fd_of(stream, default: int) -> Optional[int]:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return default if default is not None and _valid_fd(default) else None


def _valid_fd(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


class Terminal:
    """One terminal session of the dashboard (alternate screen, cbreak keys)."""

    def __init__(self, out_fd: Optional[int] = None, in_fd: Optional[int] = None):
        self.out_fd = _fd_of(sys.stdout, 1) if out_fd is None else out_fd
        if in_fd is None:
            in_fd = _fd_of(sys.stdin, 0)
        self.in_fd = in_fd if in_fd is not None and _isatty(in_fd) else None
        self._lock = threading.RLock()
        self._active = False
        self._saved_attrs = None
        self._old_handlers: dict = {}
        self._on_signal: Optional[Callable[[int], None]] = None
        self.signal_callback_errors = 0  # on_signal callbacks that raised (the signal still acts)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._leave_owed = False
        self.generation = 0  # bumped when the screen had to be given up (Ctrl-Z) and retaken

    @property
    def active(self) -> bool:
        return self._active

    def is_tty(self) -> bool:
        """True when the dashboard can draw here: a terminal with cursor addressing
        (TERM=dumb has none, so it gets plain lines like a pipe)."""
        return self.out_fd is not None and _isatty(self.out_fd) and os.environ.get("TERM") != "dumb"

    def size(self) -> Tuple[int, int]:
        """(columns, rows) now; polled every frame (SIGWINCH only reaches the main thread)."""
        try:
            sz = os.get_terminal_size(self.out_fd)
            if sz.columns > 0 and sz.lines > 0:
                return sz.columns, sz.lines
        except (OSError, TypeError, ValueError):
            pass
        return 80, 24

    def enter(self) -> None:
        """Alternate screen, hidden cursor, autowrap off, cbreak input; once."""
        with self._lock:
            if self._active:
                return
            if self.in_fd is not None:
                try:
                    self._saved_attrs = termios.tcgetattr(self.in_fd)
                    tty.setcbreak(self.in_fd, termios.TCSANOW)
                except termios.error:
                    self._saved_attrs = None
            self._active = True
            atexit.register(self.restore)
            self._write_raw(ENTER.encode())

    def write(self, data: bytes) -> bool:
        """Write one whole frame; False (and nothing written) once restored."""
        if not data:
            return True
        with self._lock:
            wrote = self._active
            if wrote:
                self._write_raw(data)
            self._pay_leave()
            return wrote

    def _writable(self, timeout: float) -> bool:
        try:
            return bool(select.select([], [self.out_fd], [], timeout)[1])
        except (OSError, ValueError):
            return False

    def _pay_leave(self) -> None:
        # restore() ran while a write was stuck and could not send LEAVE itself without
        # risking the same hang; whoever holds the lock next (the terminal moves) sends it
        if self._leave_owed and not self._active:
            self._leave_owed = False
            self._write_raw(LEAVE.encode())

    def _write_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.out_fd, view)
            except InterruptedError:
                continue
            except BlockingIOError:
                select.select([], [self.out_fd], [], 0.05)
                continue
            except OSError:
                return  # the terminal went away (hangup): nothing left to draw on
            view = view[n:]

    def restore(self) -> None:
        """Leave the alternate screen, show the cursor, restore input modes. Idempotent.

        Never blocks for long: if a frame write is stuck (a stalled ssh link, Ctrl-S), the
        input modes are restored at once and the writer sends LEAVE when it gets through,
        so a stop, a signal handler or atexit can never hang the run.
        """
        got = self._lock.acquire(timeout=0.5)
        try:
            if not self._active:
                return
            self._active = False
            if got and self._writable(0.5):
                self._write_raw(LEAVE.encode())
            else:
                self._leave_owed = True
            if self._saved_attrs is not None and self.in_fd is not None:
                try:  # TCSANOW: TCSADRAIN would wait for a stuck terminal to drain
                    termios.tcsetattr(self.in_fd, termios.TCSANOW, self._saved_attrs)
                except termios.error:
                    pass
                self._saved_attrs = None
        finally:
            if got:
                self._lock.release()
        if self._leave_owed and self._lock.acquire(blocking=False):
            try:  # the stuck writer may have finished in the meantime
                self._pay_leave()
            finally:
                self._lock.release()
        atexit.unregister(self.restore)

    # ---------------------------------------------------------------- keys

    def read_keys(self, timeout: float) -> Optional[List[str]]:
        """Wait up to `timeout` s for input; the keys read ([] if none). None when there is
        no keyboard (the caller must then sleep by other means)."""
        fd = self.in_fd
        if fd is None or not self._active:
            return None
        try:
            ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            return None
        if not ready:
            return []
        try:
            data = os.read(fd, 1024)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            self.in_fd = None
            return None
        if not data:  # EOF on the keyboard: stop reading it
            self.in_fd = None
            return None
        # the incremental decoder keeps a multi-byte character split across reads
        return parse_keys(self._decoder.decode(data))

    # ------------------------------------------------------------- signals

    def install_signal_handlers(self, on_signal: Optional[Callable[[int], None]] = None) -> bool:
        """Restore on SIGINT/SIGTERM/SIGHUP, then chain to the previous handler. Only
        possible from the main thread; returns whether handlers were installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._on_signal = on_signal
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                old = signal.getsignal(signum)
                if old is signal.SIG_IGN or old is None:
                    continue  # someone chose to ignore it (nohup): keep it that way
                signal.signal(signum, self._handle_signal)
                self._old_handlers[signum] = old
            except (ValueError, OSError):
                continue
        self._install_suspend()
        return bool(self._old_handlers)

    def _install_suspend(self) -> None:
        # Ctrl-Z: give the shell a clean terminal while stopped, take it back on fg
        try:
            old = signal.getsignal(signal.SIGTSTP)
            if old is signal.SIG_DFL:
                signal.signal(signal.SIGTSTP, self._handle_tstp)
                self._old_handlers[signal.SIGTSTP] = old
        except (ValueError, OSError, AttributeError):
            pass

    def _handle_tstp(self, signum, frame) -> None:
        was_active = self._active
        self.restore()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT
        signal.signal(signal.SIGTSTP, self._handle_tstp)
        if was_active:
            self.enter()
            self.generation += 1  # the screen was lost: the next frame repaints fully

    def uninstall_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, old in list(self._old_handlers.items()):
            try:
                if signal.getsignal(signum) in (self._handle_signal, self._handle_tstp):
                    signal.signal(signum, old)
            except (ValueError, OSError):
                pass
            del self._old_handlers[signum]

    def _handle_signal(self, signum, frame) -> None:
        self.restore()
        if self._on_signal is not None:
            try:
                self._on_signal(signum)
            except Exception:  # the terminal is restored and the signal must still act: counted
                self.signal_callback_errors += 1
        old = self._old_handlers.get(signum, signal.SIG_DFL)
        self.uninstall_signal_handlers()
        if callable(old):
            old(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            # Default action is to die; dying by SystemExit also runs finally and atexit.
            raise SystemExit(128 + signum)


def _isatty(fd: Optional[int]) -> bool:
    try:
        return fd is not None and os.isatty(fd)
    except (OSError, ValueError):
        return False
