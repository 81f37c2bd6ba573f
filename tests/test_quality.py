from driftloop.data.qa import derive_qa_pairs, question_for
from driftloop.data.quality import near_duplicates
from driftloop.pii import find_pii
from driftloop.data.records import Document


def test_pii_kinds_found_and_examples_ignored():
    found = find_pii("Mail jane.roe@acme.io, call +1 415-555-0132, card 4111 1111 1111 1111, ssn 123-45-6789, ip 8.8.8.8")
    assert set(found) == {"email", "phone", "card_number", "ssn", "ip_address"}
    assert find_pii("see user@example.com and 127.0.0.1; card 1234 5678 9012 3456") == {}


def test_near_duplicates_finds_edited_copy_only():
    base = " ".join(f"word{i}" for i in range(400))
    edited = base.replace("word200", "changed")
    other = " ".join(f"other{i}" for i in range(400))
    assert near_duplicates([base, other, edited]) == {2: (0, near_duplicates([base, edited])[1][1])}
    assert near_duplicates([base, edited])[1][1] > 0.95


def test_questions_by_heading_kind():
    assert question_for("Module `json`") == "What is the Python module `json` for?"
    assert question_for("`json.dumps(obj)`") == "What does `json.dumps` do?"
    assert question_for("Class `json.JSONEncoder`") == "What is the class `json.JSONEncoder` used for?"
    assert question_for("The assert statement") == "What does the documentation say about The assert statement?"


def test_splits_are_by_document():
    docs = [
        Document(f"d{i}", "u", "t", "md", f"# Head {i}\n\nThis paragraph explains topic {i} in enough words to count.\n\n"
                 f"## Sub {i}\n\nAnother paragraph about topic {i} that is also long enough.")
        for i in range(50)
    ]
    pairs = derive_qa_pairs(docs, eval_fraction=0.3)
    split_by_doc = {}
    for p in pairs:
        split_by_doc.setdefault(p.doc_id, set()).add(p.split)
        assert p.answer in p.context
    assert all(len(s) == 1 for s in split_by_doc.values())
    assert {"train", "eval"} == {s for v in split_by_doc.values() for s in v}
