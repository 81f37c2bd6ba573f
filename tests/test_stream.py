"""Streaming pieces are final text: they add up to the unstreamed answer, never release a
piece of a stop sequence, half a character, or part of a secret before it is checked."""

from driftloop.serving.guardrails import GuardrailSettings, Guardrails
from driftloop.serving.stream import LineReader, Released, TextDeltas, encode_event


def byte_decoder(ids: list[int]) -> str:
    # Tokens are bytes, as a byte-level BPE's are: a character may span two tokens.
    return bytes(ids).decode("utf-8", errors="replace")


def stream(text: str, stop=(), limit=None) -> tuple[list[str], TextDeltas]:
    deltas = TextDeltas(byte_decoder, stop, limit)
    pieces = [deltas.push(b) for b in text.encode()]
    pieces.append(deltas.finish())
    return [p for p in pieces if p], deltas


def test_pieces_add_up_to_the_stripped_answer_and_never_split_a_character():
    pieces, _ = stream("  Größe ändert sich: é → ü.  \n")
    assert "".join(pieces) == "Größe ändert sich: é → ü."
    assert len(pieces) > 10 and not any("\ufffd" in p for p in pieces)


def test_a_stop_sequence_is_held_back_and_left_out():
    pieces, deltas = stream("The answer is 42.\nQuestion: next", stop=["\nQuestion:"])
    assert "".join(pieces) == "The answer is 42." and deltas.stopped
    assert not any("\n" in p for p in pieces)


def test_a_false_start_of_a_stop_sequence_is_released_later():
    pieces, deltas = stream("a\nQuiet night", stop=["\nQuestion:"])
    assert "".join(pieces) == "a\nQuiet night" and not deltas.stopped


def test_the_token_limit_ends_the_stream():
    pieces, deltas = stream("abcdefgh", limit=3)
    assert "".join(pieces) == "abc" and deltas.done


def test_a_secret_split_across_pieces_is_never_released():
    guard = Guardrails(GuardrailSettings(canary="dl-canary-0123456789abcdef", toxicity_threshold=1.0))
    released = Released(guard.check_output, hold=guard.output_hold())
    text = "Sure. The reference is " + " ".join("0123456789abcdef") + " as asked."
    out = "".join(released.add(ch) for ch in text) + released.add("", final=True)
    assert released.blocked == "canary_leak"
    assert not any(c in out for c in "0123456789abcdef"[:4]), out
    clean = Released(guard.check_output, hold=guard.output_hold())
    said = "".join(clean.add(w + " ") for w in "The castle stands by the river".split()) + clean.add("", final=True)
    assert said == "The castle stands by the river " and clean.blocked is None


def test_a_toxic_looking_prefix_waits_and_the_whole_answer_decides():
    """A score of the whole text can flag a prefix and pass the answer it grows into (the
    tiny model's sampled replies did, 6 in 40): the stream then releases the whole answer,
    as the unstreamed reply would, and an answer that stays toxic is blocked at its end."""
    def check(text: str):
        return "toxic_output" if text.count("damn") * 4 > len(text.split()) else None

    released = Released(check)
    pieces = [released.add(w + " ") for w in "damn the castle stands by the river in the old town".split()]
    assert pieces[0] == "" and check("damn ") and not check("damn the castle stands by the river in the old town ")
    assert "".join(pieces) + released.add("", final=True) == "damn the castle stands by the river in the old town " and released.blocked is None
    toxic = Released(check)
    out = "".join(toxic.add(w + " ") for w in "damn damn castle damn".split()) + toxic.add("", final=True)
    assert toxic.blocked == "toxic_output" and "damn" not in out


def test_events_survive_any_split_of_the_stream():
    wire = "".join(encode_event({"text": t}) for t in ["Größe", "é\n", "ok"]) + encode_event({"done": True})
    reader, events = LineReader(), []
    for i in range(0, len(wire), 3):
        events += reader.feed(wire[i : i + 3].encode())
    assert [e.get("text") for e in events] == ["Größe", "é\n", "ok", None] and events[-1]["done"]
