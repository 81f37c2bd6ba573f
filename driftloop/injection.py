"""Prompt-injection detection: the phrasings and the normalized views of a text they are
matched on, shared by the service's input guardrail and the data checks that keep
injected text out of training answers."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata

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
