"""Token streaming: the text each generated token adds, released only once it is final.

A streamed answer must be the answer the same request gets unstreamed, character for
character. Three things make a token's text provisional: a token may end inside a UTF-8
character (decoded as U+FFFD until the next one arrives), the text may be the start of a
stop sequence (which the answer leaves out), and whitespace may turn out to be the end
of the answer (which is stripped). That text is held back until the next token decides.
Output guardrails see every prefix before it is released (`Released`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from driftloop.serving.chat import apply_stop


class TextDeltas:
    """Detokenize one row incrementally: `push` a token, get the text now final."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = (), limit: int | None = None) -> None:
        self.decode, self.stop, self.limit = decode, tuple(s for s in stop if s), limit
        self.tokens: list[int] = []
        self.sent = 0  # characters of the stripped text released so far
        self.stopped = False
        self.done = False

    def _text(self) -> str:
        return self.decode(self.tokens).lstrip()

    def push(self, token: int) -> str:
        if self.done:
            return ""
        self.tokens.append(token)
        if self.limit is not None and len(self.tokens) >= self.limit:
            self.done = True
        text, self.stopped = apply_stop(self._text(), self.stop)
        if self.stopped:
            self.done = True
            return self._release(text.rstrip())
        safe = len(text.rstrip())
        if text.endswith("\ufffd"):
            safe = min(safe, len(text) - 1)
        for s in self.stop:
            # The longest tail of the text that a stop sequence starts with stays back.
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if s.startswith(text[-n:]):
                    safe = min(safe, len(text) - n)
                    break
        return self._release(text[:safe])

    def finish(self) -> str:
        """What is left once generation ended: the held-back tail, stripped."""
        self.done = True
        text, stopped = apply_stop(self._text(), self.stop)
        self.stopped = self.stopped or stopped
        return self._release(text.rstrip() if stopped else text.strip())

    def _release(self, text: str) -> str:
        if len(text) <= self.sent:
            return ""
        delta, self.sent = text[self.sent :], len(text)
        return delta


class RowStreamer:
    """A transformers streamer for a whole batch: `generate` calls `put` with the prompt
    ids once, then with each step's new token for every row; each row's tokens go to its
    own sink (None: that row is not streamed). transformers' own streamers take one row."""

    def __init__(self, sinks: Sequence[Callable[[int], None] | None], eos_ids: set[int]) -> None:
        self.sinks, self.eos_ids = list(sinks), eos_ids
        self.ended = [sink is None for sink in self.sinks]
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.sinks), -1)[:, -1].tolist()):
            if self.ended[row]:
                continue
            if token in self.eos_ids:
                self.ended[row] = True
                continue
            self.sinks[row](int(token))

    def end(self) -> None:
        pass


@dataclass
class Released:
    """The client's side of one stream: every prefix passes the output check before it
    is released. A secret found ends the stream at once with the reason. A reason in
    `wait_on` (a toxicity score) only holds the text back: a scorer of the whole text
    can flag a prefix and pass the answer it grows into, so the whole answer decides, as
    it does unstreamed, and a stream releases what the same answer unstreamed would."""

    check: Callable[[str], str | None]
    hold: int = 0  # characters kept back, so a secret split across deltas is seen whole
    wait_on: frozenset = frozenset({"toxic_output"})
    text: str = ""
    pending: str = ""
    blocked: str | None = None

    def add(self, delta: str, final: bool = False) -> str:
        if self.blocked:
            return ""
        self.pending += delta
        reason = self.check(self.text + self.pending)
        if reason in self.wait_on and not final:
            return ""
        if reason:
            self.blocked, self.pending = reason, ""
            return ""
        cut = len(self.pending) if final else max(0, len(self.pending) - self.hold)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        self.text += out
        return out


def encode_event(event: dict) -> str:
    """One line of the models service's stream: ASCII JSON, so that a transport that
    splits the stream anywhere never splits a character."""
    return json.dumps(event, ensure_ascii=True) + "\n"


class LineReader:
    """Whole JSON lines out of a stream delivered in arbitrary pieces."""

    def __init__(self) -> None:
        self.buffer = ""

    def feed(self, piece: str | bytes) -> list[dict]:
        self.buffer += piece.decode("ascii") if isinstance(piece, bytes) else piece
        *lines, self.buffer = self.buffer.split("\n")
        return [json.loads(line) for line in lines if line.strip()]
