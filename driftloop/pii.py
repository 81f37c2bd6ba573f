"""Personal data in text: the patterns and the finder that the data checks, the evaluation
metrics and the service's redaction share, so the three agree on what PII is."""

from __future__ import annotations

import re
from collections import defaultdict

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{3}[\s.-])\d{3}[\s.-]\d{3,4}(?![\w.])")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
# Documentation is full of example addresses; they are not personal data.
_EXAMPLE_EMAIL = re.compile(r"@(example\.(com|org|net)|localhost|host|domain|python\.org)\b", re.I)
_PRIVATE_OR_DOC_IP = re.compile(r"^(127\.|0\.|10\.|192\.168\.|192\.0\.2\.|198\.51\.100\.|203\.0\.113\.|255\.|224\.)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def find_pii(text: str) -> dict[str, list[str]]:
    """Return the PII found per kind; cards need a valid Luhn sum to count."""
    found: dict[str, list[str]] = defaultdict(list)
    for match in EMAIL.finditer(text):
        if not _EXAMPLE_EMAIL.search(match.group()):
            found["email"].append(match.group())
    for match in CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
            found["card_number"].append(match.group())
    for match in SSN.finditer(text):
        found["ssn"].append(match.group())
    for match in PHONE.finditer(text):
        if len(re.sub(r"\D", "", match.group())) >= 10:
            found["phone"].append(match.group())
    for match in IPV4.finditer(text):
        if not _PRIVATE_OR_DOC_IP.match(match.group()):
            found["ip_address"].append(match.group())
    return dict(found)
