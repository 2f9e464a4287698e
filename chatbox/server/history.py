"""The single server's history: the latest public lines, bounded, in memory and on disk.

What `/history` and `/resume` replay on a server without `--cluster`: every block of
chat lines and every action the room relays, numbered in the room's one order. A place
in it is an id ``EPOCH.SEQ``: SEQ counts blocks, EPOCH names this history, so an id
from before a restart (without `--history-file`) is recognised as not this history's
and never taken for a place in it.

With `--history-file PATH` the blocks are also kept in SQLite (stdlib `sqlite3`), so
the history and its epoch survive restarts. The hub never waits on the disk: reads come
from the copy in memory (loaded once at start), and each hub turn hands the blocks it
added to a writer thread in one batch (`end_turn`), which writes all the batches it
finds waiting in one transaction (WAL mode, ``synchronous=NORMAL``: a commit is a write
to the log, not an fsync). The price: a server killed with -9 loses the batches not yet
written (the last few milliseconds), and a disk that fails mid-run is logged once while
the history goes on in memory.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import secrets
import sqlite3
import threading
from dataclasses import dataclass

from chatbox import protocol

log = logging.getLogger("chatbox.history")

# Without --history-lines, the history keeps the latest blocks up to about this many bytes.
HISTORY_BYTES = 1 << 20
# The writer gathers what the hub hands it for this long before one transaction: one
# commit per 50 ms at most, however many turns, instead of one per turn (a ping-pong
# pays a commit per line otherwise). A server killed with -9 loses at most this much.
WRITE_INTERVAL = 0.05


class HistoryFileError(Exception):
    """The --history-file cannot be used; the message is one line naming it."""


@dataclass(frozen=True)
class Block:
    seq: int
    data: bytes
    lines: int

    def last(self, count: int) -> Block:
        """This block with only its last ``count`` lines (a bound by lines cuts into
        the oldest block rather than dropping all of it)."""
        kept = b"".join(self.data.splitlines(keepends=True)[-count:])
        return Block(self.seq, kept, count)


class SqliteStore:
    """The history's blocks on disk, written by a thread of its own.

    Resource handling: `stop` writes what is still queued, ends the thread and closes
    the database; the caller calls it once the hub has stopped."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            # Used by the constructor, then only by the writer thread.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")  # proves the file can be written now
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS blocks (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)"
            )
            row = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if row is None:
                self.epoch = secrets.token_hex(4)
                self._db.execute("INSERT INTO meta VALUES ('epoch', ?)", (self.epoch,))
            else:
                self.epoch = str(row[0])
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise HistoryFileError(f"cannot use --history-file {path}: {exc}") from None
        self._queue: queue.SimpleQueue[tuple[list[tuple[int, bytes]], int] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="history", daemon=True)
        self._stopping = threading.Event()
        self._failed = False

    def load(self, max_bytes: int, max_lines: int | None) -> list[Block]:
        """The latest blocks within the bounds, oldest first (before `start`)."""
        found: list[Block] = []
        size = lines = 0
        try:
            rows = self._db.execute("SELECT seq, data FROM blocks ORDER BY seq DESC")
            for seq, data in rows:
                block = Block(int(seq), bytes(data), bytes(data).count(b"\n"))
                if found and size + len(block.data) > max_bytes:
                    break
                if max_lines is not None and lines + block.lines > max_lines:
                    if lines < max_lines:
                        found.append(block.last(max_lines - lines))
                    break
                found.append(block)
                size += len(block.data)
                lines += block.lines
        except sqlite3.Error as exc:
            raise HistoryFileError(f"cannot use --history-file {self.path}: {exc}") from None
        found.reverse()
        return found

    def start(self) -> None:
        self._thread.start()

    def put(self, blocks: list[tuple[int, bytes]], keep_from: int) -> None:
        """From the hub: write these blocks; rows before ``keep_from`` may go."""
        self._queue.put((blocks, keep_from))

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stopping.set()
            self._queue.put(None)
            self._thread.join()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            self._stopping.wait(WRITE_INTERVAL)
            batches = [item]
            # Whatever else is waiting goes in the same transaction: under load the
            # writer takes many hub turns at once.
            while item is not None:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batches.append(item)
            work = [b for b in batches if b is not None]
            if work:
                self._write(work)
            if batches[-1] is None:
                return

    def _write(self, batches: list[tuple[list[tuple[int, bytes]], int]]) -> None:
        if self._failed:
            return
        try:
            self._db.execute("BEGIN")
            for blocks, _ in batches:
                self._db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?)", blocks)
            self._db.execute("DELETE FROM blocks WHERE seq < ?", (batches[-1][1],))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failed = True
            log.error("history file %s: %s (history is kept in memory only now)", self.path, exc)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


class History:
    """The latest relayed blocks, numbered; bounded by bytes (and lines, if asked)."""

    def __init__(
        self,
        max_bytes: int = HISTORY_BYTES,
        max_lines: int | None = None,
        store: SqliteStore | None = None,
    ) -> None:
        self._max_bytes = max_bytes
        self._max_lines = max_lines
        self._store = store
        self._blocks: collections.deque[Block] = collections.deque()
        self._bytes = 0
        self._lines = 0
        self._unwritten: list[tuple[int, bytes]] = []
        if store is None:
            self.epoch = secrets.token_hex(4)
            self.last_seq = 0
        else:
            self.epoch = store.epoch
            loaded = store.load(max_bytes, max_lines)
            self._blocks.extend(loaded)
            self._bytes = sum(len(b.data) for b in loaded)
            self._lines = sum(b.lines for b in loaded)
            self.last_seq = loaded[-1].seq if loaded else 0

    def position(self, seq: int | None = None) -> str:
        """The id of the place after block ``seq`` (default: the latest)."""
        return f"{self.epoch}.{self.last_seq if seq is None else seq}"

    def remember(self, data: bytes) -> None:
        self.last_seq += 1
        block = Block(self.last_seq, data, data.count(b"\n"))
        self._blocks.append(block)
        self._bytes += len(data)
        self._lines += block.lines
        if self._store is not None:
            self._unwritten.append((block.seq, data))
        blocks = self._blocks
        while len(blocks) > 1 and self._bytes > self._max_bytes:
            old = blocks.popleft()
            self._bytes -= len(old.data)
            self._lines -= old.lines
        limit = self._max_lines
        while limit is not None and self._lines > limit:
            old = blocks.popleft()
            self._bytes -= len(old.data)
            self._lines -= old.lines
            if self._lines < limit:
                cut = old.last(limit - self._lines)
                blocks.appendleft(cut)
                self._bytes += len(cut.data)
                self._lines += cut.lines

    def end_turn(self) -> None:
        """The hub ends its turn: what it added goes to the disk, off the hub's thread."""
        if self._unwritten and self._store is not None:
            unwritten, self._unwritten = self._unwritten, []
            self._store.put(unwritten, self._blocks[0].seq)

    def recent(self, count: int) -> list[bytes]:
        """The last ``count`` lines, oldest first."""
        lines: list[bytes] = []
        for block in reversed(self._blocks):
            lines[:0] = block.data.splitlines(keepends=True)
            if len(lines) >= count:
                break
        return lines[-count:]

    def since(self, history_id: str, upto: int) -> tuple[list[bytes], bool]:
        """The lines after ``history_id`` up to block ``upto``, at most
        `protocol.RESUME_MAX` of them (the latest), and whether that is all of them.

        An id of another epoch (a restart without a history file, another server) is
        no place in this history: everything kept is replayed, not said to be complete."""
        epoch, _, seq_text = history_id.rpartition(".")
        after = int(seq_text) if epoch == self.epoch and seq_text.isdigit() else None
        picked: list[Block] = []
        for block in reversed(self._blocks):
            if after is not None and block.seq <= after:
                break
            if block.seq <= upto:
                picked.append(block)
        lines = [line for block in reversed(picked) for line in block.data.splitlines(True)]
        complete = after is not None and (not self._blocks or self._blocks[0].seq <= after + 1)
        if len(lines) > protocol.RESUME_MAX:
            lines = lines[-protocol.RESUME_MAX :]
            complete = False
        return lines, complete
