"""conversation: a two-party, turn-taking dialogue read from a script file.

Requirement: "a two-party, turn-taking dialogue read from a plain-text script file;
checks each line arrives, in order, and each party waits for the other's line before
answering."

Script format (see harness/scripts/sample.txt): one line per turn, ``NAME: text``.
Exactly two distinct names, each a letter followed by letters, digits or ``_``; the
first name to speak is the first party. Blank lines and lines starting with ``#`` are
ignored. ``|`` and ``~`` in the text are replaced by spaces (they frame tokens).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from harness.scenarios.base import Context, Options, Scenario
from harness.tokens import clean_payload
from harness.transcript import Turn

SAMPLE = Path(__file__).resolve().parent.parent / "scripts" / "sample.txt"
_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_]{0,15})\s*:\s?(.*)$")


class ScriptError(ValueError):
    """The script file cannot be used; the message names the file and line."""


def parse_script(path: Path) -> list[tuple[str, str]]:
    """Read a conversation script into (speaker, text) turns.

    Error handling: raises `ScriptError` for an unreadable file, a malformed line, or
    anything but exactly two speakers.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(f"cannot read script {path}: {exc}") from None
    turns: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if not match or not match.group(2).strip():
            raise ScriptError(f"{path}:{number}: expected 'NAME: text', got {stripped!r}")
        turns.append((match.group(1), clean_payload(match.group(2).strip())))
    speakers = list(dict.fromkeys(s for s, _ in turns))
    if len(speakers) != 2:
        raise ScriptError(f"{path}: a conversation needs exactly two speakers, found {speakers}")
    return turns


class Conversation(Scenario):
    name = "conversation"
    summary = "a two-party turn-taking dialogue from a script file (--script)"

    def check_options(self, options: Options) -> None:
        parse_script(Path(options.script) if options.script else SAMPLE)

    def run(self, ctx: Context) -> None:
        turns = parse_script(Path(ctx.options.script) if ctx.options.script else SAMPLE)
        names = list(dict.fromkeys(s for s, _ in turns))
        parties = {n: ctx.party(n) for n in names}
        first, second = names
        if not ctx.sync_all([parties[first], parties[second]]):
            ctx.record.notes.append("the two parties never heard each other's hello")
        ctx.expect(first, [second])
        ctx.expect(second, [first])
        previous: tuple[str, tuple[str, int]] | None = None
        patience = ctx.options.settle * 2 + 1.0  # for one line to arrive
        for speaker, text in turns:
            listener = parties[second if speaker == first else first]
            token = ctx.token(speaker, text)
            cue = previous[1] if previous and previous[0] != speaker else None
            ctx.record.turns.append(Turn(speaker, token.seq, cue))
            if not parties[speaker].send(token, ctx.deadline):
                ctx.record.notes.append(f"{speaker} could not say line {token.seq}")
                break
            until = min(ctx.deadline, time.monotonic() + patience)
            if not listener.wait_tokens({token.key}, until):
                ctx.record.notes.append(f"{listener.name} never heard {token}")
                if ctx.expired:
                    break
            previous = (speaker, token.key)
        ctx.settle()
