"""A synthetic, seeded PII set for tuning redaction: e-mails, phone numbers in
national and international formats, Luhn-valid card numbers with spaces or dashes,
places (cities, regions, countries, street addresses) and person names, each placed in a sentence a user might type. About half the names are
deliberately absent from driftloop/serving/names.py, so recall is not measured on the
redactor's own list. `leaked` says which planted values survive in a redacted text."""

from __future__ import annotations

import random
import re

GIVEN = ("Siobhan Oluwaseun Thandiwe Bartholomew Ximena Wanjiru Kwame Saoirse Tariq Ngozi Ingeborg Radek Zbigniew Mireille "
         "Anneliese Leopold Cosima Rasmus Aoife Dagny Tenzin Chidi Amara Folake Dariusz Agnieszka Teodora Milos Vesna Goran "
         "Parisa Farid Nasrin Deepa Lakshmi Sunil Anjali Minji Thanh Haruto Aiko "
         "Maria John Priya Ahmed Elena Lukas Sofia Daniel Fatima Wei Hiroshi Olga Carlos Emma Rahul Ana Pierre Ingrid Mehmet Chen "
         "Jennifer Michael Aisha Matteo Svetlana Yusuf Camila Kenji Zoe Liam").split()
FAMILY = ("Okafor Raghunathan Kamau Nwosu Adeyemi Kowalczyk Lindqvist Halvorsen Papadopoulos Giannakis Oyelaran Achterberg "
          "Vermeulen Fitzgerald O'Connell MacLeod Castellanos Villanueva Bautista Tshabalala Abubakar Haddad Farouk Takeda "
          "Kobayashi Pham Hoang Choi Park Moretti "
          "Smith Garcia Patel Müller Nguyen Rossi Kumar Ivanov Silva Johnson Schmidt Kim Tanaka Fischer Lopez Singh Williams "
          "Wang Novak Hernandez").split()
DOMAINS = ["gmail.com", "corp.io", "mail.co.uk", "uni-heidelberg.de", "outlook.fr", "company.com.br", "inbox.lv"]

NAME_TEMPLATES = [
    "My name is {name} and I cannot log in.", "Hi, I'm {name}; what does section 2 say?", "Dear {name}, your ticket is open.",
    "Please ask Dr. {family} about the index.", "Regards, {name}", "Contact {name} for access.",
    "Forward this to {name} before Friday.", "{name} asked me about the retry policy.", "Can {name} read the deployment log?",
    "I talked to {name} yesterday about section 4.", "Thanks, {given}! Where is the config file?", "Is {name} the owner of this job?",
    "The report from {name} says the build failed.", "Ms. {family} wants the old version back.", "Send the summary to {name} please.",
]
EMAIL_TEMPLATES = ["Mail me at {email} when it is fixed.", "My address is {email}.", "Reply to {email} with the answer.",
                   "{email} cannot reset the password."]
PHONE_TEMPLATES = ["Call me on {phone}.", "My number is {phone}, what does section 1 say?", "Reach the on-call at {phone} tonight.",
                   "Text {phone} if the job fails."]
PLACES = ("Lagos", "Nairobi", "Kraków", "Gdańsk", "Porto", "Valencia", "Lyon", "Marseille", "Rotterdam", "Utrecht", "Aarhus",
          "Tampere", "Gothenburg", "Bratislava", "Ljubljana", "Zagreb", "Thessaloniki", "Izmir", "Tbilisi", "Almaty", "Lahore",
          "Chennai", "Pune", "Hanoi", "Da Nang", "Osaka", "Busan", "Taipei", "Perth", "Auckland", "Winnipeg", "Calgary", "Quito",
          "Montevideo", "Recife", "Guadalajara", "Tucson", "Pittsburgh", "Bavaria", "Andalusia", "Queensland", "Saskatchewan",
          "Portugal", "Ghana", "Peru", "Vietnam", "Finland", "Ecuador", "Morocco", "Uruguay",
          "221 Baker Street", "12 Rue Oberkampf", "Friedrichstraße 43", "Via Roma 15", "1600 Pennsylvania Avenue", "Calle Mayor 7")
PLACE_TEMPLATES = ["I work from {place} and the mirror there is slow.", "Our team in {place} sees timeouts.", "Ship the key to {place}.",
                   "My office is at {place}; which region should I pick?", "We moved from {place} last year, is the data still there?",
                   "Users near {place} get the old version."]
CARD_TEMPLATES = ["My card {card} was charged twice.", "Refund to card number {card} please.", "Is {card} stored anywhere?"]
CLEAN = ["What does section {n} say about retries?", "How do I pin Python 3.11.4 for build {n}?", "The job on port 8080 failed on 2024-05-01.",
         "Explain the asyncio event loop in version 3.{n}.", "Why does json.dumps sort keys?", "Order 4512 shipped in 3 boxes.",
         "What is the default timeout of urllib.request?", "Section {n}: the March release notes mention Unicode 15.",
         "Can the Dagster daemon restart a run?", "Where does BentoML write its logs on Linux?"]


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16), ("35", 16)])
    digits = _luhn_complete(prefix, length, rng)
    groups = [digits[:4], digits[4:10], digits[10:]] if length == 15 else [digits[i : i + 4] for i in range(0, 16, 4)]
    return rng.choice([" ", "-", ""]).join(groups)


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(str(rng.randint(0, 9)) for _ in range(n))  # noqa: E731
    return rng.choice([
        lambda: f"({rng.randint(201, 989)}) {d(3)}-{d(4)}", lambda: f"{rng.randint(201, 989)}-{d(3)}-{d(4)}",
        lambda: f"{rng.randint(201, 989)}.{d(3)}.{d(4)}", lambda: f"+1 {rng.randint(201, 989)} {d(3)} {d(4)}",
        lambda: f"+1-{rng.randint(201, 989)}-{d(3)}-{d(4)}", lambda: f"+44 20 {d(4)} {d(4)}", lambda: f"+44 7{d(3)} {d(6)}",
        lambda: f"+49 30 {d(8)}", lambda: f"+49 151 {d(4)} {d(4)}", lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+91 9{d(4)} {d(5)}", lambda: f"+81 3-{d(4)}-{d(4)}", lambda: f"+55 11 9{d(4)}-{d(4)}", lambda: f"+4915{d(9)}",
        lambda: f"020 {d(4)} {d(4)}", lambda: f"030/{d(7)}",
    ])()


def email(rng: random.Random, given: str, family: str) -> str:
    clean = lambda s: re.sub(r"[^a-z]", "", s.lower().replace("ü", "u"))  # noqa: E731
    local = rng.choice([f"{clean(given)}.{clean(family)}", f"{clean(given)[0]}{clean(family)}{rng.randint(1, 99)}",
                        f"{clean(given)}_{clean(family)}+tag", f"{clean(family).upper()}.{clean(given)}"])
    return f"{local}@{rng.choice(DOMAINS)}"


def items(n: int, seed: int = 0) -> list[dict]:
    """n sentences, each with one planted value: {"text", "kind", "value", "parts"} where
    parts are the substrings that must not survive redaction."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        given, family = rng.choice(GIVEN), rng.choice(FAMILY)
        kind = ("name", "email", "phone", "card", "place")[i % 5]
        if kind == "name":
            template = rng.choice(NAME_TEMPLATES)
            full = f"{given} {family}"
            value = given if "{given}" in template else family if "{family}" in template else full
            text = template.format(name=full, given=given, family=family)
            parts = value.split()
        elif kind == "email":
            value = email(rng, given, family)
            text, parts = rng.choice(EMAIL_TEMPLATES).format(email=value), [value.split("@")[0]]
        elif kind == "phone":
            value = phone(rng)
            text, parts = rng.choice(PHONE_TEMPLATES).format(phone=value), [g for g in re.findall(r"\d+", value) if len(g) >= 3]
        elif kind == "place":
            value = rng.choice(PLACES)
            text, parts = rng.choice(PLACE_TEMPLATES).format(place=value), [p for p in re.findall(r"[^\W\d_]+", value) if p not in ("Street", "Rue", "Via", "Avenue", "Calle")]
        else:
            value = card(rng)
            text, parts = rng.choice(CARD_TEMPLATES).format(card=value), [g for g in re.findall(r"\d+", value) if len(g) >= 3]
        out.append({"text": text, "kind": kind, "value": value, "parts": parts})
    return out


def clean_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(CLEAN).format(n=rng.randint(1, 12)) for _ in range(n)]


def leaked(redacted: str, item: dict) -> bool:
    if item["kind"] in ("name", "place"):
        return any(re.search(rf"(?<!\w){re.escape(p)}(?!\w)", redacted) for p in item["parts"])
    return any(p in redacted for p in item["parts"])


def placeholders(text: str) -> int:
    return len(re.findall(r"\[(?:EMAIL|PHONE|CARD|SSN|IP|IBAN|NAME|PLACE)\]", text))
