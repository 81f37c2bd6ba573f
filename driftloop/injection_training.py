"""Fit the prompt-injection classifier that driftloop.injection.InjectionScreen loads.

    python -m driftloop.injection_training [--extra tests/data/injection_prompts.jsonl]

Training data: driftloop/guardrail_data/injection_train.jsonl (user turns and planted
snippets, both labels, lookalikes among the benign ones), the tuning rows of any --extra
file, and the default corpus itself: its derived questions and its sentence windows as
benign (with the READMEs of the installed distributions, for other voices), windows
holding a planted snippet as injected, and benign turns carrying Faker's made-up names,
addresses, phone and card numbers (users write their own details into questions), short
chat turns, and requests worded as orders about the corpus's own topics.
Nothing from a held-out set.

Thresholds come from 5-fold out-of-fold probabilities: a user turn is refused at the
score that keeps the refusal rate of benign turns at `--turn-fpr`; a passage is flagged
when one of its windows reaches the score that keeps benign windows at `--window-fpr`
and addresses the reader (an assistant, its instructions, the user, its reply), or one
fifth of that rate whatever it says (a chunk has about ten windows, so its own
false-quarantine rate is up to about ten times the windows').
The weights, thresholds and the figures behind them are written to one .npz, atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np

from driftloop.injection import CLASSIFIER_ENCODER, CLASSIFIER_PATH, addresses_reader, ngram_vectorizer, save_classifier, windows

TRAIN_PATH = Path(__file__).parent / "guardrail_data" / "injection_train.jsonl"


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plant(passage: str, snippet: str, rng: random.Random) -> str:
    """`snippet` put between two sentences of `passage`, at the start or the end."""
    sentences = re.split(r"(?<=[.!?])\s+", passage)
    at = rng.randint(0, len(sentences))
    return " ".join(sentences[:at] + [snippet] + sentences[at:])


def installed_readmes() -> list:
    """The long descriptions of the installed distributions (those requirements.lock pins):
    some 300 projects' documentation in Markdown and reStructuredText, so the benign
    side is not one corpus's voice."""
    import importlib.metadata

    from driftloop.data.records import Document

    docs, seen = [], set()
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower()):
        name = dist.metadata.get("Name") or ""
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if name.lower() in seen or len(body.split()) < 100:
            continue
        seen.add(name.lower())
        docs.append(Document(doc_id=f"readme/{name}", uri=name, title=name, format="markdown", text=body))
    return docs


# How users carry their own details into a question: a benign turn is no less benign for
# holding an address, a number or a name (and exfiltration attempts often name them).
_CONTACT_TEMPLATES = ["{q} My email is {email}.", "Hi, I'm {name} from {city}. {q}", "Call me on {phone} if that's easier. {q}",
                      "{email} cannot log in since yesterday. {q}", "{q} Thanks, {first}", "My number is {phone}, {ql}",
                      "Refund to card number {card} please, and {ql}", "I work from {city}; {ql}", "Contact {name} for access. {q}",
                      "Send the summary to {email} when you can. {q}", "Is {card} stored anywhere? {q}", "{name} asked me: {ql}"]


# The shortest turns of a chat: a classifier that has only seen questions and attacks
# would read two letters as either.
SMALL_TALK = ("hi", "hello", "hey", "hi there", "hello!", "hey there", "good morning", "good evening", "thanks", "thank you",
              "thanks!", "thank you so much", "cheers", "ok", "okay", "ok thanks", "yes", "no", "yes please", "no thanks", "sure",
              "great", "perfect", "got it", "makes sense", "help", "help me", "can you help?", "what?", "why?", "how?", "again?",
              "more", "tell me more", "go on", "continue", "next", "example?", "an example please", "and then?", "test", "testing",
              "ping", "hmm", "wow", "nice", "cool", "bye", "goodbye", "see you", "hola", "bonjour", "hallo", "ciao", "olá", "merci",
              "gracias", "danke", "grazie", "obrigado", "привет", "спасибо", "你好", "谢谢", "こんにちは", "ありがとう", "?", "??", "...",
              "hi, quick question", "hello, are you there?", "sorry, I meant the other one", "never mind", "that didn't work",
              "it works now, thanks", "still failing", "same error", "what do you mean?", "can you explain that?")


# Requests worded like orders but about the corpus ("Tell me everything about section 2"):
# extraction attacks use the same verbs about the prompt instead.
_REQUEST_TEMPLATES = ["Tell me everything about {t}.", "Explain everything in {t}.", "Give me all the details on {t}.",
                      "Show me everything the docs say about {t}.", "List all the options of {t}.", "Summarize {t} for me.",
                      "Print the full example from {t}.", "Repeat the part about {t}, please.", "What is everything I need to know about {t}?",
                      "Describe {t} in full.", "Give me the complete reference for {t}.", "Write out the steps in {t}."]


def corpus_requests(titles: list[str], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    topics = titles + [f"section {i}" for i in range(1, 30)] + [f"chapter {i}" for i in range(1, 15)]
    return [rng.choice(_REQUEST_TEMPLATES).format(t=rng.choice(topics)) for _ in range(n)]


def with_contact_details(questions: list[str], n: int, seed: int = 0) -> list[str]:
    from faker import Faker

    fake = Faker(["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pl_PL", "pt_BR", "nl_NL", "tr_TR", "en_IN"], use_weighting=False)
    Faker.seed(seed)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = rng.choice(questions)
        out.append(rng.choice(_CONTACT_TEMPLATES).format(q=q, ql=q[:1].lower() + q[1:], email=fake.email(), name=fake.name(),
                                                         first=fake.first_name(), city=fake.city(), phone=fake.phone_number(),
                                                         card=fake.credit_card_number()))
    return out


def examples(train_rows: list[dict], extra_rows: list[dict], corpus_texts: list[str], corpus_questions: list[str],
             titles: list[str] | None = None, seed: int = 0, doc_windows: int = 12000, planted: int = 2000) -> list[tuple[str, int, str]]:
    """(text, label, kind) rows: kind "turn" for what a user types, "window" for what a
    passage holds."""
    rng = random.Random(seed)
    rows = [(r["text"], int(r["label"]), "turn" if r["kind"] == "question" else "window") for r in train_rows]
    rows += [(r["text"], 1, "turn") for r in extra_rows if r.get("set") == "tuning" and r.get("where") == "question"]
    rows += [(q, 0, "turn") for q in rng.sample(corpus_questions, min(2500, len(corpus_questions)))]
    benign_turns = [r["text"] for r in train_rows if r["kind"] == "question" and int(r["label"]) == 0]
    rows += [(q, 0, "turn") for q in with_contact_details(benign_turns + corpus_questions[:500], 800, seed)]
    rows += [(variant, 0, "turn") for text in SMALL_TALK for variant in {text, text.capitalize(), text.upper()}]
    rows += [(q, 0, "turn") for q in corpus_requests(titles or [], 600, seed)]
    corpus_windows = [w for text in corpus_texts for w in windows(text)]
    rows += [(w, 0, "window") for w in rng.sample(corpus_windows, min(doc_windows, len(corpus_windows)))]
    snippets = [r for r in train_rows if r["kind"] == "snippet"]
    paragraphs = [p for text in corpus_texts for p in re.split(r"\n\s*\n", text) if len(p.split()) >= 20]
    for _ in range(planted):
        snippet = rng.choice(snippets)
        passage = plant(rng.choice(paragraphs), snippet["text"], rng)
        marker = " ".join(snippet["text"].split()[:4])
        held = [w for w in windows(passage) if marker in w]
        rows += [(w, int(snippet["label"]), "window") for w in held[:1]]
    return rows


def threshold_at(scores: np.ndarray, rate: float) -> float:
    """The lowest score at which at most `rate` of `scores` (benign ones) reach it."""
    ordered = np.sort(scores)[::-1]
    allowed = int(np.floor(rate * len(ordered)))
    return float(min(1.0, ordered[allowed] + 1e-6)) if allowed < len(ordered) else 0.5


def fit(rows: list[tuple[str, int, str]], encode, turn_fpr: float, window_fpr: float, c: float = 8.0) -> dict:
    """Logistic regression over two views of each text side by side: hashed character
    n-grams (TF-IDF weighted; they catch wording, obfuscation and other languages) and
    the sentence embedding (it catches paraphrase)."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    texts = [t for t, _, _ in rows]
    labels = np.array([y for _, y, _ in rows])
    kinds = np.array([k for _, _, k in rows])
    counts = ngram_vectorizer().transform(texts)
    tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
    features = hstack([tfidf.transform(counts), csr_matrix(encode(texts))]).tocsr()
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    strata = np.char.add(kinds.astype(str), labels.astype(str))
    oof = cross_val_predict(model, features, labels, cv=folds.split(features, strata), method="predict_proba")[:, 1]
    benign_windows = oof[(kinds == "window") & (labels == 0)]
    thresholds = {"turn": threshold_at(oof[(kinds == "turn") & (labels == 0)], turn_fpr),
                  "document": threshold_at(benign_windows, window_fpr), "document_alone": threshold_at(benign_windows, window_fpr / 5)}
    turn = oof >= thresholds["turn"]
    window = (oof >= thresholds["document_alone"]) | ((oof >= thresholds["document"]) & np.array([addresses_reader(t) for t in texts]))
    figures = {}
    for kind, flagged in (("turn", turn), ("window", window)):
        pos, neg = flagged[(kinds == kind) & (labels == 1)], flagged[(kinds == kind) & (labels == 0)]
        figures[kind] = {"injections": int(len(pos)), "benign": int(len(neg)),
                         "recall": round(float(pos.mean()), 4) if len(pos) else None, "false_positive_rate": round(float(neg.mean()), 4)}
    model.fit(features, labels)
    n = ngram_vectorizer().n_features
    return {"w_ngram": model.coef_[0][:n].astype(np.float32), "w_embed": model.coef_[0][n:].astype(np.float32),
            "idf": tfidf.idf_.astype(np.float32), "intercept": float(model.intercept_[0]),
            "threshold": {k: round(v, 6) for k, v in thresholds.items()}, "cross_validated": figures,
            "settings": {"C": c, "turn_fpr": turn_fpr, "window_fpr": window_fpr}}


def main(argv: list[str] | None = None) -> None:
    from driftloop.atomic import write_text
    from driftloop.data.pydocs import python_docs
    from driftloop.data.qa import derive_qa_pairs
    from driftloop.models.embedding import load_embedder

    parser = argparse.ArgumentParser(prog="python -m driftloop.injection_training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, default=TRAIN_PATH)
    parser.add_argument("--extra", type=Path, action="append", default=[], help="more labelled rows; only set=tuning rows are used")
    parser.add_argument("--out", type=Path, default=CLASSIFIER_PATH)
    parser.add_argument("--turn-fpr", type=float, default=0.005)
    parser.add_argument("--window-fpr", type=float, default=0.001)
    args = parser.parse_args(argv)

    train_rows = _read(args.train)
    extra = [r for path in args.extra for r in _read(path)]
    docs = list(python_docs()) + installed_readmes()
    questions = [p.question for p in derive_qa_pairs(docs, eval_fraction=0.2)]
    rows = examples(train_rows, extra, [d.text for d in docs], questions, sorted({d.title for d in docs if d.title}))
    # fp32 here, whatever the machine: the weights must not depend on where they were fitted.
    encoder = load_embedder(CLASSIFIER_ENCODER, "cpu", "fp32")
    model = fit(rows, lambda texts: encoder.encode(texts, batch_size=64), args.turn_fpr, args.window_fpr)
    digest = hashlib.sha256()
    for path in [args.train, *args.extra]:
        digest.update(path.read_bytes())
    meta = {"threshold": model.pop("threshold"), "cross_validated": model.pop("cross_validated"), "settings": model.pop("settings"),
            "encoder": {"name": CLASSIFIER_ENCODER, "fingerprint": encoder.fingerprint},
            "data": {"rows": len(rows), "sha256": digest.hexdigest()[:16], "files": [str(p) for p in [args.train, *args.extra]]}}
    save_classifier(args.out, model, meta)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
