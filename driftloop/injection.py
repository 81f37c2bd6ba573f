"""Prompt-injection detection: the phrasings and the normalized views of a text they are
matched on, shared by the service's input guardrail and the data checks that keep
injected text out of training answers; and the classifier screen beside them, for the
user's turn and for every passage that can reach a prompt (OWASP LLM01, direct and
indirect)."""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import hashlib
import json
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Phrasings of the OWASP LLM01 (direct injection) and LLM07 (system prompt leakage)
# families; matched case-insensitively on every normalized view of the input (below).
INJECTION_PATTERNS = [
    r"\b(ignore|disregard|forget|override|bypass)\b.{0,40}\b(previous|prior|above|earlier|system|all|your)\b.{0,40}\b(instructions?|rules?|prompts?|guidelines?|directions?)",
    r"\b(ignore|disregard|forget)\b.{0,20}\beverything\b.{0,30}\b(told|said|given|above|before)\b",
    r"\b(reveal|print|show|repeat|output|leak|display|tell me|give me|what is|what are|write out|dump|quote|recite|echo|spell|encode|summari[sz]e)\b.{0,40}"
    r"\b(system|hidden|secret|initial|original|developer|confidential|full|setup)\b.{0,20}\b(prompt|instructions?|message|rules?|key|token|password|canary|text|configuration|reference|identifiers?|parts?)",
    r"\b(what|which)\b.{0,20}\b(were|are) your\b.{0,20}\b(instructions|rules|guidelines)\b",
    r"\b(text|everything|words?|lines?)\b.{0,10}\b(above|before) (this|the|my)\b.{0,20}\b(message|question|line|prompt)?",
    r"\byou are (now|no longer)\b|\bact as (an? )?(unrestricted|unfiltered|jailbroken|dan)\b|\bdeveloper mode\b|\bjailbreak",
    r"\bdo anything now\b|\bno (longer )?(bound|restricted) by\b|\b(with|without|has|have) no (restrictions|filters|limits|rules)\b",
    r"\b(pretend|imagine|role-?play)\b.{0,30}\b(you are|you're|to be|as)\b|\bfrom now on,? you\b|\bstay in character\b",
    r"\b(system|assistant)\s*:|<\|?(im_start|system|endoftext)\|?>|\[/?(inst|sys)\]|<</?sys>>|```\s*system\b",
    r"\b(new|updated|real) (instructions?|rules?|system prompt)\s*:",
    r"\bbegin(ning)? of (the )?(prompt|conversation)\b|\beverything (above|before) (this|here)\b",
    r"\bsecret (word|code|key|token)\b|\bcanary\b|\binternal reference\b",
    r"\btranslate\b.{0,30}\b(system|above|previous)\b.{0,20}\b(prompt|instructions?|text)\b",
    # Markup that smuggles instructions past a reader or exfiltrates through a rendered link.
    r"<!--.{0,200}\b(system|instructions?|ignore|reveal|print|output)\b|!\[[^\]]*\]\(\s*https?://|<\s*(script|iframe|img|svg|object)\b|\bon(error|load)\s*=",
    r'"role"\s*:\s*"(system|developer)"',
    # The same two families in the languages users most often try.
    r"\b(ignor\w*|oubli\w*|olvid\w*|dimentic\w*|esque[cç]\w*|vergiss\w*|missacht\w*|negeer\w*|vergeet)\b.{0,40}"
    r"\b(instructions?|consignes|instrucciones|istruzioni|instru[cç][oõ]es|anweisungen|regeln|instructies|regels|reglas|regole|regras)\b",
    r"\b(syst[eè]me?|sistema|system|systeem)\s*-?(prompt|anweisung\w*)|\bprompt (du |del |di |do )?(syst[eè]me|sistema)\b|\bsystemprompt\b|\bsysteemprompt\b",
    r"(игнорир\w*|проигнорир\w*|забудь)\W.{0,40}(инструкци|правил)|системн\w* (промпт|подсказк|инструкци)",
    r"(忽略|无视|忽视|忘记|忘掉).{0,20}(指令|指示|规则|提示)|系统(提示|指令|消息)",
    r"(無視|忘れ).{0,20}(指示|命令|ルール)|(指示|命令|ルール).{0,20}(無視|忘れ)|システムプロンプト",
]
_INJECTION = re.compile("|".join(f"(?:{p})" for p in INJECTION_PATTERNS), re.IGNORECASE | re.DOTALL)
# In documentation, images, inline HTML and `"role": "system"` examples are ordinary (a
# README's badges, an LLM library's docs): a passage is held to the phrasings alone.
_MARKUP = INJECTION_PATTERNS.index(next(p for p in INJECTION_PATTERNS if p.startswith("<!--")))
_DOCUMENT_PATTERNS = [r"<!--.{0,200}\b(system|instructions?|ignore|reveal|print|output)\b"] + [
    p for i, p in enumerate(INJECTION_PATTERNS) if i != _MARKUP and not p.startswith('"role"')]
_INJECTION_IN_DOCUMENT = re.compile("|".join(f"(?:{p})" for p in _DOCUMENT_PATTERNS), re.IGNORECASE | re.DOTALL)
# What an instruction planted for a model reading the page names: the reader, its orders,
# the user or its reply, in the languages the patterns cover.
_ADDRESSES_READER = re.compile(
    r"\b(ai|a\.i\.|assistants?|llms?|chatbots?|gpt|language models?|instructions?|prompts?|ignore|disregard|forget|override|"
    r"respond|repl(y|ies)|conversation|chat|reader|the user'?s?)\b"
    r"|assist|\bia\b|\bki\b|ии|助手|アシスタント|ignor|instru|anweisung|nutzer|usuario|utilisateur|пользовател|用户|ユーザー", re.IGNORECASE)

# Letters that render like Latin ones (Cyrillic, Greek): a filter that reads bytes would
# see a different word than the model reads.
HOMOGLYPHS = str.maketrans("аеорсухіјѕԁԛԝкмнтвАЕОРСУХІЈЅКМНТВαορτυνικΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
                            "aeopcyxijsdqwkmhtbAEOPCYXIJSKMHTBaoptuvikABEZHIKMNOPTYX")
INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_LEET = str.maketrans("013457$@", "oieastsa")
_SPACED = re.compile(r"(?<!\w)(?:\w[ .\-_*|]){2,}\w(?!\w)")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


def decoded_base64(text: str) -> list[str]:
    out = []
    for token in _BASE64.findall(text):
        try:
            decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        if decoded and sum(c.isprintable() for c in decoded) / len(decoded) > 0.9:
            out.append(decoded)
    return out


_LEET_WORD = re.compile(r"(?<![\w.@/:+-])(?=[\w$@]*[A-Za-z][\w$@]*[A-Za-z])(?=[\w$@]*[0-9$@])[\w$@]+(?![\w.@/:-])")


def _leet_words(text: str) -> str:
    """Leetspeak undone in the words that mix letters with digits ("1gn0re", "pr0mpt"),
    numbers, versions and addresses left as written."""
    return _LEET_WORD.sub(lambda m: m.group().translate(_LEET), text)


def normalized_views(text: str) -> list[str]:
    """The input as the detector reads it: NFKC-folded (full-width letters), invisible
    characters dropped, homoglyphs mapped to Latin, whitespace collapsed; then also with
    spaced-out letters joined, leetspeak undone, ROT13 undone and base64 runs decoded."""
    folded = INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    base = folded.translate(HOMOGLYPHS)
    flat = " ".join(base.split())
    joined = _SPACED.sub(lambda m: re.sub(r"[ .\-_*|]", "", m.group()), base)
    return [folded, base, flat, " ".join(joined.split()), flat.translate(_LEET), codecs.encode(flat, "rot13"), *decoded_base64(flat)]


def looks_like_injection(text: str) -> bool:
    return any(_INJECTION.search(view) for view in normalized_views(text))


def addresses_reader(text: str) -> bool:
    return _ADDRESSES_READER.search(text) is not None


def looks_like_injected_document(text: str) -> bool:
    """The patterns on a retrieved or ingested passage: its folded, spaced-out and leet
    views, not ROT13 (which turns ordinary prose into random letters that can spell anything)."""
    return any(_INJECTION_IN_DOCUMENT.search(view) for view in normalized_views(text)[:5])


_SENTENCE = re.compile(r"(?<=[.!?:])\s+|\n+")


def windows(text: str, min_words: int = 8, max_words: int = 48) -> list[str]:
    """A passage cut where the classifier reads it: sentences, joined until each holds at
    least `min_words` words, a long one cut into overlapping `max_words` pieces. An
    instruction planted in a page is a sentence or two; averaged into a 200-token chunk's
    single vector it would be outvoted by the page around it."""
    out, current = [], []
    for sentence in (s.split() for s in _SENTENCE.split(text or "")):
        if not sentence:
            continue
        if len(sentence) > max_words:
            if current:
                out.append(" ".join(current))
                current = []
            step = max_words // 2
            out += [" ".join(sentence[i : i + max_words]) for i in range(0, len(sentence) - step, step)]
            continue
        if current and len(current) + len(sentence) > max_words:
            out.append(" ".join(current))
            current = []
        current += sentence
        if len(current) >= min_words:
            out.append(" ".join(current))
            current = []
    if current:
        # A short tail ("This") read alone is noise to the classifier: it joins the window before.
        if out and len(current) < min_words:
            out[-1] += " " + " ".join(current)
        else:
            out.append(" ".join(current))
    return out


CLASSIFIER_PATH = Path(__file__).parent / "guardrail_data" / "injection_classifier.npz"
# The encoder the classifier's weights were fitted on: it travels with the weights, whatever
# embedding model the index uses.
CLASSIFIER_ENCODER = "all-MiniLM-L6-v2"


@functools.cache
def ngram_vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    # Hashed, so the model file holds weights and no vocabulary; character n-grams within
    # word boundaries read "1gn0re", "ignorez" and "ignoriere" as neighbours of "ignore".
    return HashingVectorizer(analyzer="char_wb", ngram_range=(2, 5), n_features=2**18, alternate_sign=False, norm=None)


def save_classifier(path: Path, arrays: dict, meta: dict) -> None:
    import io

    from driftloop.atomic import write_bytes

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()},
                        meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8))
    write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    score: float
    by: str = ""  # "pattern", "classifier" or "" when clean
    window: str = ""


class InjectionScreen:
    """Prompt injection found by the patterns above or by a logistic regression over the
    sentence embeddings of the text's windows (driftloop/injection_training.py fits it):
    the user's turn before retrieval, and every passage before it can reach a prompt, at
    ingest and when retrieved. Verdicts on passages are cached by content hash; the cache
    and every stored verdict are keyed by `version`, the weights' own hash."""

    def __init__(self, embedder=None, path: Path = CLASSIFIER_PATH, cache_size: int = 100_000) -> None:
        import io

        raw = path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as model:
            self.w_ngram, self.w_embed, self.idf = model["w_ngram"], model["w_embed"], model["idf"]
            self.intercept = float(model["intercept"])
            self.meta = json.loads(model["meta"].tobytes())
        self.threshold = {k: float(v) for k, v in self.meta["threshold"].items()}
        self.version = "inj-" + hashlib.sha256(raw).hexdigest()[:12]
        if embedder is None:
            from driftloop.models.embedding import load_embedder

            embedder = load_embedder(CLASSIFIER_ENCODER)
        if embedder.dimension != self.w_embed.shape[0]:
            raise ValueError(f"injection classifier {path} expects {self.w_embed.shape[0]}-dimensional {CLASSIFIER_ENCODER} vectors; "
                             f"the encoder given has {embedder.dimension}")
        self.embedder = embedder
        self._cache: OrderedDict[str, Verdict] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def sharing(cls, embedder) -> InjectionScreen:
        """The screen on `embedder` when it is the classifier's own encoder (the default
        embedding model), else on a copy of that encoder of its own."""
        from driftloop.models.embedding import model_fingerprint, resolve_embedding_model

        same = embedder is not None and embedder.fingerprint == model_fingerprint(resolve_embedding_model(CLASSIFIER_ENCODER))
        return cls(embedder if same else None)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.float32)
        from sklearn.preprocessing import normalize

        counts = ngram_vectorizer().transform(list(texts))
        counts.data = np.log(counts.data) + 1.0  # sublinear tf, as fitted
        ngrams = normalize(counts.multiply(self.idf).tocsr())
        logits = ngrams @ self.w_ngram + self.embedder.encode(list(texts), batch_size=64) @ self.w_embed + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(logits).ravel()))

    def turn(self, text: str) -> Verdict:
        """A user's message: the patterns on every view, then the classifier on the views an
        encoder can read (folded, spaced-out letters joined, leetspeak undone, base64
        decoded) and, for a long message, on each of its windows."""
        if looks_like_injection(text):
            return Verdict(True, 1.0, "pattern", text)
        views = normalized_views(text)
        # Not views[4] (every digit read as a letter) nor views[5] (ROT13): on ordinary text
        # they are gibberish ("section i say"), which the classifier has never seen as benign.
        readable = [v for v in views[:4] + [_leet_words(views[2])] + views[6:] if v.strip()]
        pieces = windows(views[2]) if len(views[2].split()) > 48 else []
        candidates = list(dict.fromkeys(readable + pieces))
        return self._decide(candidates, self.probabilities(candidates), "turn")

    def documents(self, texts: Sequence[str], hashes: Sequence[str] | None = None) -> list[Verdict]:
        """One verdict per passage, its windows scored in one batch; passages seen before
        (same content hash, same classifier) are not scored again."""
        keys = list(hashes) if hashes is not None else [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        out: list[Verdict | None] = [None] * len(texts)
        with self._lock:
            for i, key in enumerate(keys):
                if key in self._cache:
                    self._cache.move_to_end(key)
                    out[i] = self._cache[key]
        todo = [i for i, v in enumerate(out) if v is None]
        for i in todo:
            if looks_like_injected_document(texts[i]):
                out[i] = Verdict(True, 1.0, "pattern", texts[i])
        todo = [i for i in todo if out[i] is None]
        pieces = {i: windows(texts[i]) or [texts[i]] for i in todo}
        # Overlapping chunks share windows (and pages share boilerplate): each distinct
        # window is scored once.
        distinct = list(dict.fromkeys(w for i in todo for w in pieces[i]))
        scored = dict(zip(distinct, self.probabilities(distinct), strict=True))
        for i in todo:
            out[i] = self._decide(pieces[i], np.array([scored[w] for w in pieces[i]]), "document")
        with self._lock:
            for key, verdict in zip(keys, out, strict=True):
                self._cache[key] = verdict
                self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out  # type: ignore[return-value]

    def _decide(self, texts: Sequence[str], probs: np.ndarray, kind: str) -> Verdict:
        if not len(probs):
            return Verdict(False, 0.0)
        if kind == "document":
            # The reader-addressing windows may flag at the lower threshold; any at the higher.
            gated = np.array([p if p >= self.threshold["document_alone"] or addresses_reader(t) else 0.0
                              for t, p in zip(texts, probs, strict=True)])
            best = int(np.argmax(gated)) if gated.max() > 0 else int(np.argmax(probs))
            score = float(probs[best])
            flagged = bool(gated[best] >= self.threshold["document"])
        else:
            best = int(np.argmax(probs))
            score = float(probs[best])
            flagged = score >= self.threshold[kind]
        return Verdict(flagged, score, "classifier" if flagged else "", texts[best])


@dataclass
class ScreenReport:
    screened: int = 0
    reused: int = 0
    seconds: float = 0.0


def screen_chunks(rows: Sequence[dict], screen: InjectionScreen, cleared: set[str]) -> tuple[list[dict], list[tuple[dict, Verdict]], ScreenReport]:
    """Chunk rows split into those that may reach a prompt (stamped `screened_by`) and the
    flagged ones with their verdicts. `cleared` holds the content hashes this classifier
    version already passed (the previous version of the dataset): those are not read again."""
    import time

    started = time.perf_counter()
    todo = [r for r in rows if r["content_hash"] not in cleared]
    verdicts = dict(zip((r["chunk_id"] for r in todo), screen.documents([r["text"] for r in todo], [r["content_hash"] for r in todo]), strict=True))
    kept, flagged = [], []
    for row in rows:
        verdict = verdicts.get(row["chunk_id"])
        if verdict is not None and verdict.flagged:
            flagged.append((row, verdict))
        else:
            kept.append({**row, "screened_by": screen.version})
    return kept, flagged, ScreenReport(screened=len(todo), reused=len(rows) - len(todo), seconds=time.perf_counter() - started)
