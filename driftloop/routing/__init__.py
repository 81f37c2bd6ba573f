"""The router in front of the LLM: two logistic regressions, trained per lineage from its
own questions, decide per request between three paths.

- `out_of_scope`: a polite reply, no generation. The scope model reads the question's
  embedding and how well it retrieves (top cosine, its gap to the second, the mean of the
  top k); in scope are the lineage's training questions, out of scope a set of everyday
  questions written for driftloop (`out_of_scope.jsonl`, train and eval parts apart).
  A written question that retrieves as well as the corpus's own questions do (above their
  lowest decile) is left out of training: on a corpus about cooking, a cooking question
  is in scope, whatever the list says.
- `extractive`: the top chunk's sentences that best match the question, no generation. The
  extractive model reads retrieval and overlap features; its label is whether that
  extract matches the reference answer (token F1 >= `EXTRACT_F1`). It takes the path
  only when confident (`extractive_threshold`, 0.7 by default).
- `rag`: everything else, a full generated answer.

Weights are plain JSON (no pickle), content-hashed with the router's version. Nothing
here imports Dagster; `assets/serving.py`'s `serving/router` trains and gates it, the
service loads it from the bundle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

ROUTES = ("rag", "extractive", "out_of_scope")
OUT_OF_SCOPE_REPLY = ("That question is outside what these documents cover, so I can't answer it from them. "
                      "Ask me about the documents' subject and I'll find the passage.")
EXTRACT_F1 = 0.5
EXTRACT_MAX_WORDS = 60
ROUTER_FILE = "router.json"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(])")
_WORD = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*")
_STOP = frozenset("a an and are as at be by can do does for from how i in is it of on or the this to what when where which who why "
                  "with you your my me we our it's its should would could will".split())


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@functools.cache
def _stem():
    # Snowball's English stemmer, so "removing" meets "remove" and "packages" "package".
    from nltk.stem.snowball import SnowballStemmer

    return functools.lru_cache(maxsize=65536)(SnowballStemmer("english").stem)


def content(text: str) -> set[str]:
    stem = _stem()
    return {stem(w) for w in words(text) if w not in _STOP and len(w) > 1}


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return 0.0
    common = sum(min(pred.count(w), ref.count(w)) for w in set(pred))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _sections(text: str) -> list[tuple[str, list[list[str]]]]:
    """The text as (heading, paragraphs under it, each a list of sentences) in order; prose
    before any heading has an empty heading. A heading is a Markdown `#` line or a line
    underlined with = - ~ ^."""
    sections: list[tuple[str, list[list[str]]]] = [("", [])]
    prose: list[str] = []
    lines = text.splitlines()

    def paragraph_ends() -> None:
        joined = " ".join(" ".join(prose).split())
        sentences = [s.strip() for s in _SENTENCE.split(joined) if s.strip()]
        if sentences:
            sections[-1][1].append(sentences)
        prose.clear()

    for i, line in enumerate(lines):
        stripped = line.strip()
        underlined = i + 1 < len(lines) and len(lines[i + 1].strip()) >= 3 and set(lines[i + 1].strip()) <= set("=-~^")
        if stripped.startswith("#") or (stripped and underlined):
            paragraph_ends()
            sections.append((stripped.lstrip("#").strip(), []))
        elif not stripped or set(stripped) <= set("=-~^"):
            paragraph_ends()
        else:
            prose.append(stripped)
    paragraph_ends()
    return [s for s in sections if s[0] or s[1]]


def extract(question: str, text: str) -> tuple[str, float]:
    """The passage of `text` that best answers `question`: the first paragraph of the section
    whose heading shares the most content words with it (sections open with their point),
    else the rest of the paragraph from the sentence that shares the most, cut at
    EXTRACT_MAX_WORDS; and the share of the question's content words the passage and its
    heading hold."""
    asked = content(question)
    candidates = []  # (overlap, a heading wins a tie, the earlier wins a tie, heading, sentences)
    for b, (heading, paragraphs) in enumerate(_sections(text)):
        if heading and paragraphs:
            candidates.append((len(asked & content(heading)), 1, -b, heading, paragraphs[0]))
        for paragraph in paragraphs:
            for i, sentence in enumerate(paragraph):
                candidates.append((len(asked & content(sentence)), 0, -b, "", paragraph[i:]))
    if not candidates:
        return "", 0.0
    _, _, _, heading, sentences = max(candidates, key=lambda c: c[:3])
    picked, count = [], 0
    for sentence in sentences:
        n = len(sentence.split())
        if picked and count + n > EXTRACT_MAX_WORDS:
            break
        picked.append(sentence)
        count += n
    passage = " ".join(picked)
    return passage, (len(asked & (content(passage) | content(heading))) / len(asked)) if asked else 0.0


def retrieval_features(scores: Sequence[float]) -> list[float]:
    s = sorted((float(x) for x in scores if math.isfinite(float(x))), reverse=True)
    top = s[0] if s else 0.0
    return [top, top - (s[1] if len(s) > 1 else 0.0), float(np.mean(s)) if s else 0.0]


def scope_features(vector: np.ndarray, scores: Sequence[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).ravel()
    norm = np.linalg.norm(v)
    return np.concatenate([v / norm if norm else v, retrieval_features(scores)])


def extractive_features(question: str, chunks: Sequence[dict]) -> tuple[np.ndarray, str]:
    if not chunks:
        return np.zeros(6), ""
    passage, covered = extract(question, chunks[0]["text"])
    asked = content(question)
    in_chunk = len(asked & content(chunks[0]["text"])) / len(asked) if asked else 0.0
    stats = retrieval_features([c["score"] for c in chunks])
    return np.array([*stats, covered, in_chunk, min(len(passage.split()), EXTRACT_MAX_WORDS) / EXTRACT_MAX_WORDS]), passage


@dataclass
class Logistic:
    coef: list[float]
    intercept: float
    threshold: float

    def probability(self, x: np.ndarray) -> float:
        z = float(np.dot(self.coef, x) + self.intercept)
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, threshold: float, c: float = 1.0) -> Logistic:
        from sklearn.linear_model import LogisticRegression

        if len(set(y.tolist())) < 2:
            raise ValueError(f"a router model needs examples of both classes; got only {int(y[0]) if len(y) else 'none'}")
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x, y)
        return cls([float(v) for v in model.coef_[0]], float(model.intercept_[0]), threshold)


@dataclass
class Route:
    path: str
    scope_p: float
    extractive_p: float | None = None
    passage: str = ""

    def to_dict(self) -> dict:
        return {"path": self.path, "scope_p": round(self.scope_p, 4),
                "extractive_p": None if self.extractive_p is None else round(self.extractive_p, 4)}


@dataclass
class Router:
    scope: Logistic
    extractive: Logistic
    embedding_model: str
    k: int
    trained_on: dict = field(default_factory=dict)
    version: str = ""

    def route(self, question: str, vector: np.ndarray, chunks: Sequence[dict]) -> Route:
        scope_p = self.scope.probability(scope_features(vector, [c["score"] for c in chunks[: self.k]]))
        if scope_p < self.scope.threshold or not chunks:
            return Route("out_of_scope", scope_p)
        x, passage = extractive_features(question, chunks[: self.k])
        p = self.extractive.probability(x)
        return Route("extractive", scope_p, p, passage) if p >= self.extractive.threshold and passage else Route("rag", scope_p, p)

    def to_dict(self) -> dict:
        body = {"scope": asdict(self.scope), "extractive": asdict(self.extractive), "embedding_model": self.embedding_model, "k": self.k,
                "trained_on": self.trained_on}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return {**body, "version": f"router-{digest}"}

    @classmethod
    def from_dict(cls, data: dict) -> Router:
        return cls(Logistic(**data["scope"]), Logistic(**data["extractive"]), data["embedding_model"], int(data["k"]),
                   data.get("trained_on", {}), data.get("version", ""))

    def save(self, folder: Path) -> Path:
        from driftloop.atomic import write_json

        data = self.to_dict()
        self.version = data["version"]
        path = Path(folder) / ROUTER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data, indent=1)
        return path

    @classmethod
    def load(cls, folder: Path) -> Router | None:
        path = Path(folder) / ROUTER_FILE
        if not path.is_file():
            return None
        _stem()  # loaded now, not on the first routed request
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def written_out_of_scope(split: str) -> list[str]:
    """driftloop's own everyday questions, `train` or `eval` (disjoint, for the held-out check)."""
    text = resources.files("driftloop.routing").joinpath("out_of_scope.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r["question"] for r in rows if r["split"] == split]


@dataclass
class Retrieved:
    questions: list[str]
    vectors: np.ndarray
    chunks: list[list[dict]]


def retrieve(embedder, index, questions: Sequence[str], k: int) -> Retrieved:
    """The questions as the service sees them: embedded, then searched in the index."""
    vectors = np.asarray(embedder.encode(list(questions)), dtype=np.float32)
    scores, ids = index.search(vectors, k, list(questions))
    chunks = [[{**{key: index.chunks[int(i)].get(key) for key in ("chunk_id", "doc_id", "text")}, "score": float(s)}
               for s, i in zip(srow, irow, strict=True) if int(i) >= 0] for srow, irow in zip(scores, ids, strict=True)]
    return Retrieved(list(questions), vectors, chunks)


def train_router(in_scope: Retrieved, answers: Sequence[str], out_of_scope: Retrieved, embedding_model: str, k: int,
                 scope_threshold: float = 0.25, extractive_threshold: float = 0.7) -> tuple[Router, dict]:
    """Both models from the lineage's training questions (with their reference answers) and
    the written out-of-scope questions; also what training saw."""
    floor = float(np.quantile([c[0]["score"] if c else 0.0 for c in in_scope.chunks], 0.1)) if in_scope.chunks else 0.0
    kept = [i for i, c in enumerate(out_of_scope.chunks) if not c or c[0]["score"] < floor]
    x = np.array([scope_features(in_scope.vectors[i], [c["score"] for c in in_scope.chunks[i]]) for i in range(len(in_scope.questions))]
                 + [scope_features(out_of_scope.vectors[i], [c["score"] for c in out_of_scope.chunks[i]]) for i in kept])
    y = np.array([1] * len(in_scope.questions) + [0] * len(kept))
    scope = Logistic.fit(x, y, scope_threshold)
    rows = [extractive_features(q, c) for q, c in zip(in_scope.questions, in_scope.chunks, strict=True)]
    labels = np.array([int(token_f1(passage, answer) >= EXTRACT_F1) for (_, passage), answer in zip(rows, answers, strict=True)])
    extractive = Logistic.fit(np.array([features for features, _ in rows]), labels, extractive_threshold)
    seen = {"in_scope": len(in_scope.questions), "out_of_scope": len(kept),
            "out_of_scope_left_out": len(out_of_scope.questions) - len(kept), "extractive_positive_share": round(float(labels.mean()), 4)}
    return Router(scope, extractive, embedding_model, k, trained_on=seen), seen


def evaluate_router(router: Router, in_scope: Retrieved, answers: Sequence[str], out_of_scope: Retrieved) -> dict:
    """Held-out figures: in-scope questions kept (not refused), out-of-scope questions caught,
    the token F1 of extractive answers against the reference, and each path's share."""
    routes = [router.route(q, in_scope.vectors[i], in_scope.chunks[i]) for i, q in enumerate(in_scope.questions)]
    outside = [router.route(q, out_of_scope.vectors[i], out_of_scope.chunks[i]).path for i, q in enumerate(out_of_scope.questions)]
    refused = [path == "out_of_scope" for path in outside]
    extractive = [token_f1(r.passage, a) for r, a in zip(routes, answers, strict=True) if r.path == "extractive"]
    every = [r.path for r in routes] + outside
    return {
        "in_scope_questions": len(routes), "out_of_scope_questions": len(refused),
        "in_scope_kept": round(sum(r.path != "out_of_scope" for r in routes) / len(routes), 4) if routes else None,
        "out_of_scope_caught": round(sum(refused) / len(refused), 4) if refused else None,
        "extractive_share": round(len(extractive) / len(routes), 4) if routes else None,
        "extractive_f1": round(float(np.mean(extractive)), 4) if extractive else None,
        "share_by_path": {p: round(sum(r.path == p for r in routes) / len(routes), 4) for p in ROUTES} if routes else {},
        "share_without_generation": round(sum(p in ("extractive", "out_of_scope") for p in every) / len(every), 4) if every else None,
    }
