"""Training examples are shown what retrieval shows (RAFT): the retrieved chunks in their
order, the answering chunk swapped in where retrieval missed it, never an eval document."""

from driftloop.data.instructions import build_examples, training_contexts
from driftloop.prompts import MAX_CONTEXT_CHARS, load_prompt
from driftloop.retrieval.quality import holds_answer

ANSWER = "The lantern keeper trims every wick at dusk before the ferry leaves the northern pier."


def chunk(doc: str, text: str) -> dict:
    return {"doc_id": doc, "text": text}


def filler(word: str, chars: int = 990) -> str:
    return (f"{word} " * chars)[:chars]


CHUNKS = [
    chunk("harbor", "Synopsis: keeper [--trim] [--wick N] " + filler("option", 300)),  # 0: the page's code, no answer
    chunk("harbor", ANSWER + " " + filler("lantern", 300)),  # 1: the answer
    chunk("ferry", filler("timetable")),  # 2
    chunk("ferry", filler("ticket")),  # 3
    chunk("exam", filler("secret")),  # 4: an eval document's chunk
    chunk("pier", filler("mooring")),  # 5
]


def row(qa_id: str, doc: str = "harbor", answer: str = ANSWER) -> dict:
    return {"qa_id": qa_id, "doc_id": doc, "question": f"What does the keeper do ({qa_id})?", "answer": answer,
            "context": "Keeper\n\n" + answer, "split": "train"}


def test_a_retrieved_answer_keeps_retrieval_order():
    found = training_contexts([row("q1")], CHUNKS, [[0, 1, 2, 3]], k=3, exclude_docs=set())
    assert found.texts["q1"] == [CHUNKS[0]["text"], CHUNKS[1]["text"], CHUNKS[2]["text"]]
    assert (found.retrieved_hits, found.answer_inserted) == (1, 0)


def test_a_missed_answer_is_swapped_in_visible_at_varied_positions():
    rows = [row(f"q{i}") for i in range(12)]
    found = training_contexts(rows, CHUNKS, [[0, 2, 3, 5]] * len(rows), k=3, exclude_docs=set())
    assert found.answer_inserted == len(rows) and found.retrieved_hits == 0
    positions = set()
    for r in rows:
        texts = found.texts[r["qa_id"]]
        assert len(texts) == 3 and CHUNKS[1]["text"] in texts
        assert holds_answer("\n\n".join(texts)[:MAX_CONTEXT_CHARS], ANSWER), texts
        positions.add(texts.index(CHUNKS[1]["text"]))
    assert len(positions) > 1, "the answer always sits in one place: the model would learn the place"


def test_an_answer_cut_off_by_the_context_limit_counts_as_missed():
    # Chunks 2 and 3 fill the context; the answer retrieved third would be truncated away.
    found = training_contexts([row("q1")], CHUNKS, [[2, 3, 1]], k=3, exclude_docs=set())
    assert found.retrieved_hits == 0 and found.answer_inserted == 1
    assert holds_answer("\n\n".join(found.texts["q1"])[:MAX_CONTEXT_CHARS], ANSWER)


def test_eval_documents_never_reach_training():
    found = training_contexts([row("q1")], CHUNKS, [[4, 1, 4, 2, 3]], k=3, exclude_docs={"exam"})
    assert found.texts["q1"] == [CHUNKS[1]["text"], CHUNKS[2]["text"], CHUNKS[3]["text"]]
    assert found.eval_chunks_skipped == 2


def test_no_chunk_with_the_answer_falls_back_to_the_section():
    other = "Ropes are coiled clockwise on the deck of every vessel that docks overnight."
    found = training_contexts([row("q1", answer=other)], CHUNKS, [[0, 2, 3]], k=3, exclude_docs=set())
    assert found.section_fallback == 1 and "Keeper\n\n" + other in found.texts["q1"]


def test_examples_show_the_retrieved_contexts():
    rows = [row("q1"), {**row("q2"), "split": "eval"}]
    found = training_contexts(rows[:1], CHUNKS, [[0, 1, 2]], k=3, exclude_docs=set())
    examples = build_examples(rows, load_prompt("rag.v1"), found.texts)
    assert [e["qa_id"] for e in examples] == ["q1"]
    user = examples[0]["messages"][1]["content"]
    assert user.index("Synopsis") < user.index(ANSWER[:30]) and "timetable" in user
    assert examples[0]["messages"][-1] == {"role": "assistant", "content": ANSWER}


def test_a_correction_to_an_eval_question_is_leakage_whatever_its_doc_id():
    """Feedback examples carry doc_id feedback/<request>: the leakage check must look at
    the text, the question asked and the answer taught, against the eval split."""
    from driftloop.data.suites import eval_texts, instruction_frame

    prompt = load_prompt("rag.v1")
    qa = [{**row("e1"), "split": "eval", "question": "How does the keeper trim a wick?"}, row("t1")]

    def example(qa_id: str, question: str, answer: str, doc: str = "feedback/req") -> dict:
        messages = prompt.messages(question, "Context text about lanterns and ferries.")
        return {"example_id": qa_id, "qa_id": qa_id, "doc_id": doc, "prompt_version": prompt.version,
                "messages": [*messages, {"role": "assistant", "content": answer}]}

    rows = [example("asks", "how does the keeper trim a WICK", "With scissors, at dusk."),
            example("teaches", "Who keeps the lantern?", ANSWER.upper()),
            example("longer", "How does the keeper trim a wick on the ferry?", "With care."),
            example("clean", "Who sails the ferry?", "The ferryman.", doc="harbor")]
    frame = instruction_frame(rows, {"exam"}, eval_texts(qa)).set_index("example_id")
    assert frame.loc["asks", "leaks_eval_doc"] == "it asks an eval question"
    assert frame.loc["teaches", "leaks_eval_doc"] == "its answer is an eval reference answer"
    assert frame.loc["longer", "leaks_eval_doc"] is None and frame.loc["clean", "leaks_eval_doc"] is None
