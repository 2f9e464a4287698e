"""Tab completion for the terminal client: commands, and the names of who is here.

The client keeps no roster of its own on the server's behalf; it learns names from the
lines it is shown anyway (chat lines, joins, leaves, renames, the welcome and `/who`),
so completion works with any server that speaks docs/protocol.md and costs nothing on
the wire. A name the client has not seen yet is simply not offered.

Threads: `learn` is called by the receiving thread, `complete` by readline in the main
thread; one lock keeps the set of names consistent between them.
"""

from __future__ import annotations

import threading

from chatbox import protocol


class Completer:
    """Knows the commands and the names seen so far; answers readline's completer calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # casefolded -> as written
        self._me: str | None = None
        self._matches: list[str] = []

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names.values(), key=str.casefold)

    def learn(self, line: str) -> None:
        """Update the names from one received line (as the server sent it)."""
        with self._lock:
            self._learn(line)

    def _learn(self, line: str) -> None:
        if match := protocol.CHAT_LINE.match(line):
            self._add(match.group(2))
        elif match := protocol.ACTION_LINE.match(line):
            self._add(match.group(1))
        elif match := protocol.WELCOME_LINE.match(line):
            self._me = match.group(1)
            for name in match.group(2).split(", "):
                self._add(name)
        elif match := protocol.WELCOME_ALONE_LINE.match(line):
            self._me = match.group(1)
        elif match := protocol.HERE_LINE.match(line):
            self._names.clear()
            for name in match.group(1).split(", "):
                self._add(name)
        elif match := protocol.JOINED_LINE.match(line):
            for name in protocol.notice_names(match)[0]:
                self._add(name)
        elif match := protocol.RENAMED_LINE.match(line):
            self._names.pop(match.group(1).casefold(), None)
            self._add(match.group(2))
        elif match := protocol.LEFT_LINE.match(line):
            for name in protocol.notice_names(match)[0]:
                self._names.pop(name.casefold(), None)
        elif match := protocol.YOU_RENAMED_LINE.match(line):
            self._me = match.group(1)
            self._names.pop(match.group(1).casefold(), None)

    def _add(self, name: str) -> None:
        if name and (self._me is None or name.casefold() != self._me.casefold()):
            self._names[name.casefold()] = name

    def candidates(self, line: str, word: str) -> list[str]:
        """What WORD, the word being typed in LINE, may complete to."""
        if line.lstrip() == word and word.startswith("/"):
            return [c for c in protocol.COMMANDS if c.startswith(word.lower())]
        folded = word.casefold()
        return [name for name in self.names() if name.casefold().startswith(folded)]

    def complete(self, word: str, state: int) -> str | None:
        """readline's completer protocol: the STATE-th completion of WORD, or None."""
        if state == 0:
            import readline

            line = readline.get_line_buffer()[: readline.get_endidx()]
            self._matches = self.candidates(line, word)
            if len(self._matches) == 1:
                # Python's readline module appends nothing; a unique match is a whole word.
                self._matches[0] += " "
        return self._matches[state] if state < len(self._matches) else None

    def install(self) -> None:
        """Make this readline's completer; words are split on blanks only (names have -.|)."""
        import readline

        readline.set_completer_delims(" \t")
        readline.set_completer(self.complete)
        # Python's readline module binds Tab to insert a tab; a chat line wants completion.
        readline.parse_and_bind("tab: complete")
