"""A ctypes binding to GNU readline's callback interface, so the client owns the loop.

The console (`ReadlineConsole`) drives it: it reads the terminal itself, hands the bytes
over with `take_input`, lets readline handle them with `feed`, and draws received lines
between two keys with `clear_line` and `redraw`. The terminal's mode is held for the
whole session (`hold_terminal`, `release_terminal`), not only while a line is edited.
`GnuReadline.load` finds the library Python's own readline module loaded and gives None
where there is none (libedit, Windows, readline older than 7.0).
"""

from __future__ import annotations

import ctypes
import os
import sys


class GnuReadline:
    """GNU readline's callback interface, through ctypes on the library Python loaded.

    Python's readline module offers only the blocking `input()`, which owns the loop and
    leaves no safe moment to draw; the callback interface gives the loop to us. The
    library is the one the module already loaded (same history, same inputrc, same
    state), found through the module's own file.

    Readline never reads the terminal itself here: its `rl_getc_function` takes bytes
    from our buffer, which the console fills with `os.read` after `select`. A read inside
    readline is out of Python's reach - a Ctrl-C then (which also discards the terminal's
    unread input) would leave it blocked; a read in Python is interrupted by Ctrl-C.
    """

    _LINE_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    _GETC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
    _HOOK = ctypes.CFUNCTYPE(ctypes.c_int)

    def __init__(self, lib: ctypes.CDLL, libc: ctypes.CDLL, fd: int) -> None:
        self._lib = lib
        self._libc = libc
        self._fd = fd
        self._libc.free.argtypes = [ctypes.c_void_p]
        self._lib.rl_callback_handler_install.argtypes = [ctypes.c_char_p, self._LINE_HANDLER]
        self._lib.add_history.argtypes = [ctypes.c_char_p]
        # Python's own handlers take Ctrl-C and window changes; readline must not
        # install its own around each key.
        ctypes.c_int.in_dll(lib, "rl_catch_signals").value = 0
        ctypes.c_int.in_dll(lib, "rl_catch_sigwinch").value = 0
        # Kept referenced: C holds pointers to them for the life of the process.
        self._handler = self._LINE_HANDLER(self._on_line)
        self._getc = self._GETC(self._next_byte)
        self._available = self._HOOK(self.pending_input)
        for name, func in (
            ("rl_getc_function", self._getc),
            ("rl_input_available_hook", self._available),
        ):
            ctypes.c_void_p.in_dll(lib, name).value = ctypes.cast(func, ctypes.c_void_p).value
        # Readline would leave its terminal mode each time a line ends and the handler is
        # removed; the terminal mode is ours to manage (`hold_terminal`, `release_terminal`).
        # The hook is put back on release, for anyone who uses readline after us.
        self._deprep_hook = ctypes.c_void_p.in_dll(lib, "rl_deprep_term_function")
        self._deprep_saved = self._deprep_hook.value
        self.held = False
        self._input = bytearray()
        self._interrupted = False
        self._last: bytes | None = None
        self.done = False
        self.line: bytes | None = None

    @classmethod
    def load(cls, fd: int) -> GnuReadline | None:
        try:
            import readline
        except ImportError:
            return None
        path = getattr(readline, "__file__", None)
        if path is None or "libedit" in (readline.__doc__ or ""):
            return None
        try:
            lib = ctypes.CDLL(path)  # symbols resolve in the module and the libs it loaded
            if ctypes.c_int.in_dll(lib, "rl_readline_version").value < 0x0700:
                return None  # rl_clear_visible_line and rl_callback_sigcleanup came in 7.0
            return cls(lib, ctypes.CDLL(None), fd)
        except (OSError, AttributeError, ValueError):
            return None

    def start(self, prompt: str) -> None:
        """Show PROMPT and start collecting a line (terminal in readline's mode)."""
        self.done = False
        self.line = None
        sys.stdout.flush()
        self._lib.rl_callback_handler_install(prompt.encode(), self._handler)
        self._libc.fflush(None)

    def pending_input(self) -> int:
        return 1 if self._input else 0

    def take_input(self, data: bytes) -> None:
        self._input += data

    def feed(self) -> None:
        """Let readline handle the buffered bytes, up to the end of a line."""
        while self._input and not self.done:
            self._lib.rl_callback_read_char()
            self._libc.fflush(None)
            if self._interrupted:
                self._interrupted = False
                raise KeyboardInterrupt

    def _next_byte(self, stream: int | None) -> int:
        # Readline wants a byte. Normally one is buffered; some commands (quoted-insert)
        # read on, and then we read the terminal, in Python, where Ctrl-C reaches us.
        try:
            while not self._input:
                data = os.read(self._fd, 4096)
                self._input += data or b"\x04"
        except KeyboardInterrupt:
            self._interrupted = True  # raised again once readline has returned
            return 0  # NUL: set-mark, harmless; the line is abandoned anyway
        except OSError:
            self._input += b"\x04"
        byte = self._input[0]
        del self._input[0]
        return byte

    def _on_line(self, pointer: int | None) -> None:
        # Called by readline, inside rl_callback_read_char, for Enter (a line) or Ctrl-D
        # on an empty line (NULL).
        if pointer is not None:
            self.line = ctypes.string_at(pointer)
            if self.line and self.line != self._last:
                self._lib.add_history(self.line)
                self._last = self.line
            self._libc.free(pointer)
        self.done = True
        # Take the prompt down now, or readline would show a fresh one after the handler.
        self._lib.rl_callback_handler_remove()

    def abandon(self) -> None:
        """Forget a half-typed line (Ctrl-C, hang-up) and reset readline's state."""
        self._lib.rl_free_line_state()
        self._lib.rl_callback_sigcleanup()
        self._lib.rl_cleanup_after_signal()

    def stop(self) -> None:
        """Take the prompt down and give the terminal back (safe to repeat)."""
        self._lib.rl_callback_handler_remove()
        self._libc.fflush(None)

    def clear_line(self) -> None:
        sys.stdout.flush()
        self._lib.rl_clear_visible_line()
        self._libc.fflush(None)

    def redraw(self) -> None:
        self._lib.rl_forced_update_display()
        self._libc.fflush(None)

    def resize(self) -> None:
        self._lib.rl_resize_terminal()
        self._libc.fflush(None)

    def hold_terminal(self) -> None:
        """Put the terminal in readline's mode and keep it there, between lines too."""
        self._deprep_hook.value = None
        self._lib.rl_prep_terminal(1)  # 1: eight-bit input, for UTF-8
        self._libc.fflush(None)  # readline may have written a mode switch (bracketed paste)
        self.held = True

    def release_terminal(self) -> None:
        """Give the terminal its own mode back (safe to repeat; also an exit hook)."""
        if not self.held:
            return
        self.held = False
        self._lib.rl_deprep_terminal()
        self._libc.fflush(None)
        self._deprep_hook.value = self._deprep_saved

    def reset_screen_size(self) -> None:
        self._lib.rl_reset_screen_size()
