"""Which capitalized words of a message are a person or a place: a classifier over
candidate spans, so context decides ("ask Jenkins about it" against "Jenkins throws
NoSuchMethodError"), not a list.

Candidates are every run of up to five capitalized words and each of its contiguous
parts, runs of lower-case words that are known names or places, and spaCy's own people
and places. Each is described by its words and their shapes and letter n-grams, the
words around it, the message's vocabulary, spaCy's entity label and part of speech,
and whether Faker's name lists, GeoNames and ISO 3166 or an English word list hold it,
beside all-MiniLM-L6-v2's token vectors averaged over the span and over the message.
A multinomial logistic regression scores it as none, name or place; the spans above a
kind's threshold are merged. Fitted by `driftloop.pii_training` into one .npz.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

import numpy as np
from spacy.lang.en.stop_words import STOP_WORDS

from driftloop.redaction import (
    NAME_CUES,
    PLACE_CUES,
    PYTHON_WORDS,
    STREET_WORD,
    TECHNICAL,
    english_words,
    fold,
    gazetteer,
    name_lexicon,
)

CLASSIFIER_PATH = Path(__file__).parent / "guardrail_data" / "pii_span_classifier.npz"
KINDS = ("none", "NAME", "PLACE")
N_FEATURES = 2**18
MAX_RUN = 5

_TOKEN = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+|[^\w\s]")
# Postcodes of many countries: 10115, 1100-053, 80-827, LS6 3AB, G1R 1P2, 150-0002.
_POSTCODE = re.compile(r"\b(?:\d{4,6}|\d{2,4}-\d{3,4}|\d{3} \d{2}|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}|[A-Z]\d[A-Z] ?\d[A-Z]\d)\b")
_PARTICLES = frozenset("van von de del della der den da di du la le bin ibn al el ter ten dos das st y".split())


def _shape(word: str) -> str:
    if word.isupper():
        return "XX" if len(word) > 1 else "X"
    if word[:1].isupper():
        return "Xx-Xx" if "-" in word else "Xx" if word[1:].islower() else "XxX"
    return "x" if word.islower() else "other"


def tokens(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]


def _is_word(token: str) -> bool:
    return token[:1].isalpha()


# Lower-case words that belong inside a street address: "rue des Lilas", "ul. Długa", "Váci utca".
_ADDRESS_WORDS = frozenset("rue ul utca cad sok mah no apt flat unit suite floor piso depto col av avda calle via rua straße str "
                           "strasse weg gasse de des du la le los las del da do dos das di della van der den bis".split())


def address_runs(text: str, toks: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """Token ranges shaped like a postal address: on one line, capitalized words, numbers,
    postcodes and the commas, slashes and abbreviations between them, with at least one
    number and two words ("Rua Augusta 142, 2º Esq, 1100-053 Lisboa")."""
    found, i = [], 0
    while i < len(toks):
        j = i
        while j < len(toks) and (j == i or "\n" not in text[toks[j - 1][1] : toks[j][0]]):
            word = toks[j][2]
            if not (word[:1].isupper() or word.isdigit() or word in ",./-º°#'" or word.lower() in _ADDRESS_WORDS
                    or (len(word) <= 2 and word.isalpha())):
                break
            j += 1
        run = [t[2] for t in toks[i:j]]
        while run and not (run[-1][:1].isalnum()):
            run.pop()
            j -= 1
        words = [w for w in run if w[:1].isalpha() and len(w) > 2]
        if j > i and any(w.isdigit() for w in run) and len(words) >= 2 and any(w[:1].isupper() for w in words):
            found.append((i, j))
            first_number = next(k for k in range(i, j) if toks[k][2].isdigit())
            if first_number > i:
                found.append((first_number, j))
        i = max(j, i + 1)
    return found


def candidates(text: str, toks: list[tuple[int, int, str]], extra: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token ranges [i, j) that could be a name or a place."""
    given, family = name_lexicon()
    places, english = gazetteer(), english_words()
    found: set[tuple[int, int]] = set(address_runs(text, toks))

    def known_lower(word: str) -> bool:
        # A lower-case word no English list holds may be a name typed in lower case
        # ("ping chatterjee about it"); the classifier weighs its letters and context.
        low = word.lower()
        return low not in english and low not in STOP_WORDS and (len(low) >= 3 or low in given or low in family or fold(word) in places)

    i = 0
    while i < len(toks):
        word = toks[i][2]
        capital = _is_word(word) and word[0].isupper()
        if not (capital or (_is_word(word) and known_lower(word))):
            i += 1
            continue
        j = i + 1
        while j < len(toks) and j - i < MAX_RUN:
            gap = text[toks[j - 1][1] : toks[j][0]]
            nxt = toks[j][2]
            if gap == " " and _is_word(nxt) and (nxt[0].isupper() if capital else known_lower(nxt)):
                j += 1
            elif gap == " " and nxt.lower() in _PARTICLES and j + 1 < len(toks) and toks[j + 1][2][:1].isupper():
                j += 1
            elif nxt == "." and len(toks[j - 1][2]) == 1 and j + 1 < len(toks) and toks[j + 1][2][:1].isupper():
                j += 1
            else:
                break
        for a in range(i, j):
            for b in range(a + 1, j + 1):
                if toks[a][2].lower() not in _PARTICLES and toks[b - 1][2].lower() not in _PARTICLES and toks[b - 1][2] != ".":
                    found.add((a, b))
        i = j
    starts = {s: k for k, (s, _, _) in enumerate(toks)}
    ends = {e: k + 1 for k, (_, e, _) in enumerate(toks)}
    for start, end in extra:
        if start in starts and end in ends and starts[start] < ends[end]:
            found.add((starts[start], ends[end]))
    return sorted(found)


def features(text: str, toks: list[tuple[int, int, str]], span: tuple[int, int], context: dict) -> list[str]:
    """String features of token range `span` (hashed later)."""

    i, j = span
    words = [t[2] for t in toks[i:j]]
    low = [w.lower() for w in words]
    given, family = name_lexicon()
    english = english_words()
    start, end = toks[i][0], toks[j - 1][1]
    surface = text[start:end]
    out = [f"n={min(j - i, 4)}", "shape=" + " ".join(_shape(w) for w in words[:4]), f"sp={surface.lower()}",
           f"first={low[0]}", f"last={low[-1]}"]
    for w, lw in zip(words, low, strict=True):
        out += [f"w={lw}", f"suf3={lw[-3:]}", f"suf4={lw[-4:]}", f"pre3={lw[:3]}"]
        padded = f"<{lw}>"
        out += [f"c3={padded[k:k + 3]}" for k in range(len(padded) - 2)]
        out += ["giv" if lw in given else "giv-no", "fam" if lw in family else "fam-no", "eng" if lw in english else "eng-no"]
        if lw in PYTHON_WORDS:
            out.append("pyword")
        if TECHNICAL.match(w):
            out.append("technical")
    if low[0] in given and low[-1] in family and j - i >= 2:
        out.append("given+family")
    if any(w.isdigit() for w in words):
        out += ["digits", f"commas={min(surface.count(','), 3)}"]
        if STREET_WORD.search(surface):
            out.append("street")
        if _POSTCODE.search(surface):
            out.append("postcode")
        out += ["gaz-part" for w in words if len(w) > 2 and fold(w) in gazetteer()][:1]
    folded = fold(surface)
    if folded in gazetteer():
        out.append("gaz")
    if folded in gazetteer(major=True):
        out.append("gaz-major")
    for k in (1, 2, 3):
        left = toks[i - k][2].lower() if i - k >= 0 else "<s>"
        right = toks[j + k - 1][2].lower() if j + k - 1 < len(toks) else "</s>"
        out += [f"L{k}={left}", f"R{k}={right}"]
    out.append(f"L2L1={toks[i - 2][2].lower() if i >= 2 else '<s>'}_{toks[i - 1][2].lower() if i >= 1 else '<s>'}")
    before, after = text[max(0, start - 2) : start], text[end : end + 2]
    out += [f"bc={before}", f"ac={after}"]
    prev = text[:start].rstrip()
    if not prev or prev[-1] in ".!?:;\n\"'":
        out.append("sentence-start")
    if not prev or text[:start].endswith("\n") or "\n" in text[max(0, start - 3) : start]:
        out.append("line-start")
    if NAME_CUES.search(text[:start]):
        out.append("name-cue")
    if PLACE_CUES.search(text[:start]):
        out.append("place-cue")
    for label in context["ents"].get((start, end), ()):
        out.append(f"entx={label}")
    for label in {lab for (s, e), labs in context["ents"].items() if s < end and start < e for lab in labs}:
        out.append(f"ent={label}")
    out += [f"pos={p}" for p in {context["pos"].get(t[0], "") for t in toks[i:j]}]
    out += [f"rule={r}" for r in context["rules"] if any(s < end and start < e for s, e in context["rules"][r])]
    out += context["doc"]
    return out


def span_context(text: str, doc, rules: dict) -> dict:
    """What every candidate of one message shares: spaCy's entities and tags, the rules'
    spans and the message's own words."""
    ents: dict[tuple[int, int], list[str]] = {}
    for ent in doc.ents:
        ents.setdefault((ent.start_char, ent.end_char), []).append(ent.label_)
    words = {w.lower() for w in re.findall(r"[A-Za-z][a-z]{2,}", text)}
    return {"ents": ents, "pos": {t.idx: t.pos_ for t in doc}, "rules": rules, "doc": [f"d={w}" for w in sorted(words)]}


ENCODER = "all-MiniLM-L6-v2"


class TokenVectors:
    """all-MiniLM-L6-v2's last hidden layer for each word piece of a message, with the
    pieces' character offsets: a candidate is described by the mean vector of its pieces
    and the message by the mean of all, so what the encoder learned about words in context
    reaches the classifier (lower case: the encoder is uncased; case is in the string
    features)."""

    def __init__(self, embedder=None) -> None:
        import torch

        from driftloop.models.embedding import load_embedder

        self.embedder = embedder or load_embedder(ENCODER, "cpu", "fp32")
        self.model = self.embedder.model[0].auto_model
        self.tokenizer = self.embedder.tokenizer
        self.torch = torch

    def __call__(self, texts: list[str], batch_size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for begin in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[begin : begin + batch_size], return_offsets_mapping=True, padding=True, truncation=True,
                                   max_length=256, return_tensors="pt")
            offsets = batch.pop("offset_mapping").numpy()
            with self.torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state.float().numpy()
            mask = batch["attention_mask"].numpy().astype(bool) & (offsets[:, :, 1] > offsets[:, :, 0])
            out += [(hidden[k][mask[k]], offsets[k][mask[k]]) for k in range(len(hidden))]
        return out


def dense(vectors: tuple[np.ndarray, np.ndarray], spans: list[tuple[int, int]]) -> np.ndarray:
    """Per candidate: the mean vector of its pieces, then the message's mean vector."""
    hidden, offsets = vectors
    width = hidden.shape[1] if hidden.size else 384
    whole = hidden.mean(axis=0) if len(hidden) else np.zeros(width, dtype=np.float32)
    rows = []
    for start, end in spans:
        inside = (offsets[:, 0] < end) & (offsets[:, 1] > start) if len(offsets) else np.zeros(0, dtype=bool)
        rows.append(np.concatenate([hidden[inside].mean(axis=0) if inside.any() else np.zeros(width, dtype=np.float32), whole]))
    return np.asarray(rows, dtype=np.float32).reshape(len(spans), 2 * width)


@functools.cache
def hasher():
    from sklearn.feature_extraction import FeatureHasher

    return FeatureHasher(n_features=N_FEATURES, input_type="string", alternate_sign=False)


def describe(text: str, doc, rules: dict, extra: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[list[str]]]:
    """Character spans of the candidates and their features."""
    toks = tokens(text)
    context = span_context(text, doc, rules)
    ranges = candidates(text, toks, extra)
    return [(toks[i][0], toks[j - 1][1]) for i, j in ranges], [features(text, toks, r, context) for r in ranges]


def analyse(text: str, doc) -> tuple[list[tuple[int, int]], list[list[str]], set[tuple[int, int]]]:
    """A message's candidates and features from its spaCy analysis, and the spans that are
    never a person or place: the one description training and the recognizer share."""
    from driftloop.redaction import rule_spans

    extra = [(e.start_char, e.end_char) for e in doc.ents if e.label_ in ("PERSON", "GPE", "LOC", "FAC")]
    # A word spaCy reads as a nationality or language ("Answer in French.") is kept even
    # where the classifier would take it for a family name.
    peoples = {(e.start_char, e.end_char) for e in doc.ents if e.label_ in ("NORP", "LANGUAGE")}
    ranges, rows = describe(text, doc, rule_spans(text), extra)
    return ranges, rows, peoples


def pick(ranges: list[tuple[int, int]], probs: np.ndarray, threshold: dict, vetoed: set) -> list[tuple[int, int, str, float]]:
    """The candidates whose most likely kind clears that kind's threshold."""
    picked = []
    for (start, end), p in zip(ranges, probs, strict=True):
        kind = 1 + int(np.argmax(p[1:]))
        if p[kind] >= threshold[KINDS[kind]] and (start, end) not in vetoed:
            picked.append((start, end, KINDS[kind], float(p[kind])))
    return picked


def design(rows: list[list[str]], vectors: np.ndarray, scale: tuple[np.ndarray, np.ndarray]):
    """The classifier's input: hashed string features beside the standardized encoder vectors."""
    from scipy import sparse

    mean, std = scale
    return sparse.hstack([hasher().transform(rows), sparse.csr_matrix((vectors - mean) / std)], format="csr")


def save(path: Path, coef: np.ndarray, intercept: np.ndarray, scale: tuple[np.ndarray, np.ndarray], meta: dict) -> None:
    """Weights as float16 (sparse rows of the hashed space compress well), atomically."""
    import io
    import os
    import tempfile

    buffer = io.BytesIO()
    np.savez_compressed(buffer, coef=coef.astype(np.float16), intercept=intercept.astype(np.float32),
                        mean=scale[0].astype(np.float32), std=scale[1].astype(np.float32),
                        meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8))
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, path)


class SpanClassifier:
    """The fitted weights; `spans` gives (start, end, kind) for one message."""

    def __init__(self, path: Path = CLASSIFIER_PATH, embedder=None) -> None:
        raw = path.read_bytes()
        self.version = "pii-" + hashlib.sha256(raw).hexdigest()[:12]
        with np.load(path) as model:
            self.coef = model["coef"].astype(np.float32)
            self.intercept = model["intercept"]
            self.scale = (model["mean"], model["std"])
            self.meta = json.loads(model["meta"].tobytes())
        self.threshold = {k: float(v) for k, v in self.meta["threshold"].items()}
        self.vectors = TokenVectors(embedder)

    def scores(self, rows: list[list[str]], vectors: np.ndarray) -> np.ndarray:
        if not rows:
            return np.zeros((0, len(KINDS)), dtype=np.float32)
        logits = design(rows, vectors, self.scale) @ self.coef.T + self.intercept
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def spans(self, text: str, doc) -> list[tuple[int, int, str, float]]:
        ranges, rows, vetoed = analyse(text, doc)
        probs = self.scores(rows, dense(self.vectors([text])[0], ranges) if ranges else np.zeros((0, 0)))
        return pick(ranges, probs, self.threshold, vetoed)
