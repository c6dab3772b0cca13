"""Adversarial property test: 100,000 seeded creepy signals through `guard`, zero leaks.

A generator plants one creepy fragment per signal (a sensitive or life-event term in some disguise, a
time, weekday, month, date, duration, count, size, address, postcode, store code, phone, email or url,
or the request's own colour/size/store) into a category, item name, brand or attribute, and sends the
signals through `guard()` on every channel, every combination of consent purposes, logged in or not,
as recommendation reasons (every basis) and NBA messages. The oracle does not use the scrubber: the
generator knows what it planted, and a planted fragment (after NFKC and case folding, the same on
both sides) must not appear in any output text or param value. Base names are letters only, so a
digit in an output is a leak too. Life-event names may be named only on the customer's own logged-in
site or app; sensitive ones never.

Written against the guard's public API only; `benchmarks/guard.py` reuses `generate` and `leaks`.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from features.schema import BRAND, CHANNELS, COLOR, ITEM_ID, SIZE
from serving import guard as g
from serving.guard import (
    NBA_MESSAGE,
    PURPOSES,
    RECOMMENDATION_REASON,
    GuardRequest,
    Signal,
    consent_from_flags,
    guard,
    load_policy,
)

SEED = 20_250_107
N_SIGNALS = 100_000
#: Where a life-event name may be said (the customer's own logged-in screens); see serving/guard.yaml.
OWN_SCREENS = frozenset({"web", "app"})

# Clean names (letters only: a digit in an output is always a leak).
BASE_CATEGORIES = (
    "running shoes", "Sports > Tents", "Home > Kitchen > Frying pans", "garden tools", "board games",
    "Kids’ jackets", "T-shirts & tops", "Sport > Laufschuhe", "Chaussures de randonnée",
    "Zapatillas de running", "Home > Bedroom > Pillows", "Electronics > Headphones", "Beauty > Night cream",
    "Wohnen > Kerzen",
)
BASE_ITEMS = (
    "Trail Runner jacket", "Chef Knife", "Cloud Tee", "Alpine Tent", "Garden Fork", "Couteau de chef",
    "Wanderschuh Classic", "Sartén de hierro", "Summit Fleece", "Harbor Tote", "Velvet Armchair",
)
BRANDS = ("Nike", "Patagonia", "Acme", "Kestrel", "Lumen")
ITEM_IDS = ("sku_alpha", "sku_beta", "sku_gamma", "sku_delta", "sku_epsilon")
OWN_VALUES = {COLOR: ("teal", "crimson", "Navy"), SIZE: ("medium", "petite", "Large"),
              "store_id": ("Soho", "Camden Market"), "location": ("Brooklyn", "Montmartre")}
ACTIONS = ("cart_reminder", "cross_sell", "upsell", "replenishment_reminder", "winback_offer",
           "service_recovery", "loyalty_reward", "thank_you", "brand_new_action")
EVENT_TYPES = ("view", "search", "add_to_cart", "purchase", "try_on", "social_like", "email_click",
               "declared_preference", "return", "review")
ORIGINS = ("first_party", "zero_party", "inferred")
TIMEZONES = (None, "Europe/Paris", "Asia/Tokyo", "America/Los_Angeles")

# Sensitive and life-event terms as a shopper would read them: (singular or phrase, plural), language.
SENSITIVE_TERMS = (
    ("lingerie", "lingeries"), ("pregnancy test", "pregnancy tests"), ("sex toy", "sex toys"),
    ("condom", "condoms"), ("maternity dress", "maternity dresses"),
    ("incontinence pad", "incontinence pads"), ("weight loss", "weight loss"),
    ("hearing aid", "hearing aids"), ("tampon", "tampons"), ("adult toy", "adult toys"), ("prenatal vitamin", "prenatal vitamins"),
    ("funeral", "funerals"), ("e-cigarette", "e-cigarettes"), ("préservatif", "préservatifs"),
    ("test de grossesse", "tests de grossesse"),
    ("sous-vêtement", "sous-vêtements"), ("perte de poids", "perte de poids"),
    ("Schwangerschaftstest", "Schwangerschaftstests"), ("Unterwäsche", "Unterwäsche"), ("Kondom", "Kondome"),
    ("Sexspielzeug", "Sexspielzeuge"), ("Inkontinenz", "Inkontinenz"), ("lencería", "lencerías"),
    ("prueba de embarazo", "pruebas de embarazo"), ("preservativo", "preservativos"),
    ("juguete sexual", "juguetes sexuales"), ("ropa interior", "ropa interior"),
)
LIFE_EVENT_TERMS = (
    ("baby clothes", "baby clothes"), ("nappy", "nappies"), ("wedding dress", "wedding dresses"),
    ("engagement ring", "engagement rings"), ("moving box", "moving boxes"), ("stroller", "strollers"),
    ("bébé", "bébés"), ("poussette", "poussettes"), ("robe de mariée", "robes de mariée"),
    ("Babynahrung", "Babynahrung"), ("Kinderwagen", "Kinderwagen"), ("Hochzeitskleid", "Hochzeitskleider"),
    ("pañal", "pañales"), ("vestido de novia", "vestidos de novia"), ("cochecito", "cochecitos"),
)
_HOMOGLYPHS = {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "i": "і", "s": "ѕ",
               "A": "Α", "B": "Β", "E": "Ε", "H": "Η", "K": "Κ", "M": "Μ", "O": "Ο", "P": "Ρ", "T": "Τ"}
_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7", "l": "1"}
DISGUISES = ("plain", "plural", "upper", "compound", "hyphen", "underscore", "dots", "spaced", "lookalike",
             "fullwidth", "leet", "zero_width", "no_accents", "plural_lookalike", "leet_hyphen")


def _strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c))


def disguise(term: tuple[str, str], how: str, rng: random.Random) -> str:
    """One term, written the way `how` says (the generator's own rules, not the scrubber's)."""
    word = term[1] if how in ("plural", "plural_lookalike") else term[0]
    if how == "upper":
        return word.upper()
    if how == "compound":  # words run together, German style
        return word.replace(" ", "").replace("-", "")
    if how == "hyphen":
        half = len(word) // 2
        return word.replace(" ", "-") if " " in word else word[:half] + "-" + word[half:]
    if how == "underscore":
        return word.replace(" ", "_")
    if how == "dots":
        return ".".join(word.replace(" ", ""))
    if how == "spaced":
        return " ".join(word.replace(" ", ""))
    if how in ("lookalike", "plural_lookalike"):
        return "".join(_HOMOGLYPHS.get(c, c) if rng.random() < 0.5 else c for c in word)
    if how == "fullwidth":
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in word)
    if how in ("leet", "leet_hyphen"):
        out = "".join(_LEET.get(c, c) if rng.random() < 0.6 else c for c in word)
        return out.replace(" ", "-") if how == "leet_hyphen" else out
    if how == "zero_width":
        return "\u200b".join(word)
    if how == "no_accents":
        return _strip_accents(word)
    return word


def _n(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, hi)


def _non_fraction(rng: random.Random) -> str:
    while True:
        d, m = _n(rng, 1, 28), _n(rng, 1, 12)
        if not (d < m and m in (2, 3, 4, 8)):
            return f"{d}/{m}"


# Creepy fragments by class: each a function of the generator.
FRAGMENTS: dict[str, tuple[Any, ...]] = {
    "time": (
        lambda r: f"{_n(r, 0, 23)}:{_n(r, 0, 59):02d}", lambda r: f"{_n(r, 1, 12)}.{_n(r, 0, 59):02d}pm",
        lambda r: f"{_n(r, 0, 23)}h{_n(r, 0, 59):02d}", lambda r: f"{_n(r, 1, 12)} am",
        lambda r: f"{_n(r, 1, 12)} PM", lambda r: f"{_n(r, 0, 23)} Uhr", lambda r: f"{_n(r, 1, 12)} heures",
        *(lambda r, p=p: p for p in (
            "tonight", "this evening", "this morning", "late night", "last night", "ce soir", "ce matin",
            "hier soir", "heute Abend", "heute Nacht", "gestern", "esta noche", "esta mañana", "anoche",
            "midnight", "yesterday", "today")),
    ),
    "weekday": tuple(lambda r, d=d: d for d in (
        "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "weekend", "Tue",
        "Tues", "Wed", "Thu", "Thurs", "Fri", "Mon.", "Sat.", "Sun.", "lundi", "mardi", "mercredi", "jeudi",
        "vendredi", "samedi", "dimanche", "lun.", "mer.", "Montag", "Dienstag", "Mittwoch", "Donnerstag",
        "Freitag", "Samstag", "Sonntag", "Mo.", "Di.", "Fr.", "lunes", "martes", "miércoles", "jueves",
        "viernes", "sábado", "domingo")),
    "month": tuple(lambda r, m=m: m for m in (
        "January", "February", "April", "June", "July", "September", "October", "November", "December",
        "Jan", "Feb", "Sept", "Oct", "Nov", "Dec", "janvier", "février", "avril", "juillet", "août",
        "décembre", "janv.", "févr.", "Januar", "Februar", "März", "Juni", "Oktober", "Dezember", "Okt.",
        "Dez.", "enero", "febrero", "marzo", "abril", "junio", "agosto", "octubre", "diciembre")),
    "date": (
        lambda r: f"{_n(r, 2000, 2030)}-{_n(r, 1, 12):02d}-{_n(r, 1, 28):02d}", _non_fraction,
        lambda r: f"{_n(r, 1, 28):02d}.{_n(r, 1, 12):02d}.{_n(r, 2000, 2030)}",
        lambda r: f"{_n(r, 1, 28)} {r.choice(('Jan', 'Feb', 'March', 'May', 'Aug', 'Sept'))}",
        lambda r: f"le {_n(r, 1, 28)} {r.choice(('mars', 'mai', 'juin', 'août'))}",
        lambda r: f"{_n(r, 1, 28)}. {r.choice(('März', 'Mai', 'Juli'))}",
        lambda r: f"{_n(r, 1, 28)} de {r.choice(('marzo', 'mayo', 'julio'))}",
        lambda r: f"{r.choice(('Jan', 'Mar', 'May', 'Oct'))} {_n(r, 1, 28)}th",
    ),
    "duration": (
        lambda r: f"{_n(r, 2, 59)} minutes", lambda r: f"{_n(r, 2, 59)} mins",
        lambda r: f"{_n(r, 2, 9)} hours", lambda r: f"{_n(r, 2, 9)} Std.", lambda r: f"{_n(r, 2, 9)} Stunden",
        lambda r: f"{_n(r, 2, 59)} minutos",
        lambda r: f"{_n(r, 2, 59)} secondes", lambda r: f"{r.choice((7, 13, 45, 421, 999))}s",
        lambda r: f"{_n(r, 2, 30)} days", lambda r: "seven minutes", lambda r: "trois heures",
    ),
    "count": (
        lambda r: f"x{_n(r, 2, 9)}", lambda r: f"{_n(r, 2, 9)}x", lambda r: f"{_n(r, 2, 30)} times",
        lambda r: f"{r.choice(('three', 'five', 'seven'))} times", lambda r: "twice", lambda r: "à nouveau",
        lambda r: "otra vez", lambda r: "dreimal", lambda r: f"{_n(r, 2, 9)} fois",
        lambda r: f"{_n(r, 2, 9)} veces",
        lambda r: "visited", lambda r: "again and again", lambda r: "de nuevo",
    ),
    "size": (
        lambda r: r.choice(("XS", "XL", "XXL", "3XL")), lambda r: f"size {_n(r, 4, 16)}",
        lambda r: f"taille {_n(r, 34, 46)}", lambda r: f"Größe {_n(r, 34, 46)}",
        lambda r: f"talla {_n(r, 34, 46)}",
        lambda r: f"{r.choice((32, 34, 36, 38))}{r.choice(('B', 'C', 'DD', 'E'))}",
        lambda r: f"W{_n(r, 28, 38)} L{_n(r, 28, 34)}", lambda r: f"EU {_n(r, 36, 46)}",
        lambda r: f"UK {_n(r, 4, 12)}",
        lambda r: f"US {_n(r, 5, 12)}.5", lambda r: "(M)", lambda r: "S/M", lambda r: "Gr. L",
    ),
    "address": (
        lambda r: f"{_n(r, 1, 999)}{r.choice(('', 'B'))} {r.choice(('Baker', 'Oxford', 'Main'))} Street",
        lambda r: f"{_n(r, 1, 150)} rue de {r.choice(('Rivoli', 'la Paix', 'Lyon'))}",
        lambda r: f"{r.choice(('Haupt', 'Bahnhof', 'Schiller'))}straße {_n(r, 1, 150)}",
        lambda r: f"Calle {r.choice(('Mayor', 'Alcalá', 'Serrano'))} {_n(r, 1, 150)}",
    ),
    "postcode": (
        lambda r: r.choice(("SW1A 1AA", "EC1A 1BB", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT")),
        lambda r: f"{_n(r, 10000, 99999)}-{_n(r, 1000, 9999)}", lambda r: f"NY {_n(r, 10000, 14999)}",
        lambda r: f"{_n(r, 75001, 75020)} Paris", lambda r: f"{_n(r, 10115, 14199)} Berlin",
        lambda r: f"{_n(r, 28001, 28080)} Madrid",
    ),
    "store_code": (
        lambda r: f"store #{_n(r, 1, 999)}", lambda r: f"STR-{_n(r, 1, 9999):04d}",
        lambda r: f"shop {_n(r, 1, 99)}", lambda r: f"Filiale {_n(r, 1, 99)}",
        lambda r: f"tienda {_n(r, 1, 99)}", lambda r: f"magasin {_n(r, 1, 99)}",
    ),
    "phone": (
        lambda r: f"+44 20 7946 {_n(r, 1000, 9999)}",
        lambda r: f"06 {_n(r, 10, 99)} {_n(r, 10, 99)} {_n(r, 10, 99)} 78",
        lambda r: f"({_n(r, 200, 999)}) {_n(r, 200, 999)}-{_n(r, 1000, 9999)}",
        lambda r: f"+49 30 {_n(r, 100000, 999999)}",
    ),
    "contact": (
        lambda r: f"jane.doe{_n(r, 1, 99)}@example.com", lambda r: f"www.example{_n(r, 1, 99)}.com",
        lambda r: f"https://shop.example/p{_n(r, 1, 99)}", lambda r: f"@jane{_n(r, 1, 99)}",
    ),
}
CLASSES = ("sensitive", "life_event", "own_value", *FRAGMENTS)
NAME_FIELDS = ("category", "item_name", "brand")


@dataclass(frozen=True)
class Plant:
    """What the generator put where (the oracle's ground truth)."""

    cls: str
    fragment: str
    field: str
    disguise: str = ""


@dataclass(frozen=True)
class Case:
    reason: GuardRequest
    nba: GuardRequest
    plants: tuple[Plant, ...]
    n_signals: int


def _placed(base: str, frag: str, field: str, rng: random.Random) -> str:
    if field == "category" and rng.random() < 0.3:
        return f"{frag} > {base}" if rng.random() < 0.5 else f"{base} > {frag}"
    return rng.choice((f"{base} {frag}", f"{frag} {base}", f"{base} – {frag}", f"{base} ({frag})"))


def _signal(rng: random.Random, channel: str, cls: str | None) -> tuple[Signal, Plant | None]:
    fields: dict[str, Any] = {
        "category": rng.choice(BASE_CATEGORIES), "item_name": rng.choice(BASE_ITEMS),
        "item_id": rng.choice(ITEM_IDS) if rng.random() < 0.9 else None,
    }
    attrs = {BRAND: rng.choice(BRANDS)} if rng.random() < 0.6 else {}
    plant = None
    if cls == "own_value":
        key = rng.choice(tuple(OWN_VALUES))
        value = rng.choice(OWN_VALUES[key])
        if key in (COLOR, SIZE):
            attrs[key] = value
        else:
            fields[key] = value
        field = rng.choice(("category", "item_name"))
        fields[field] = _placed(fields[field], value, field, rng)
        plant = Plant(cls, value, field)
    elif cls is not None:
        if cls in ("sensitive", "life_event"):
            how = rng.choice(DISGUISES)
            frag = disguise(rng.choice(SENSITIVE_TERMS if cls == "sensitive" else LIFE_EVENT_TERMS), how, rng)
        else:
            how, frag = "", rng.choice(FRAGMENTS[cls])(rng)
        field = rng.choice(NAME_FIELDS)
        if field == "brand":
            attrs[BRAND] = _placed(rng.choice(BRANDS), frag, field, rng) if rng.random() < 0.5 else frag
        else:
            fields[field] = _placed(fields[field], frag, field, rng)
        plant = Plant(cls, frag, field, how)
    sig = Signal(
        source_event_type=rng.choice(EVENT_TYPES), channel=channel, attributes=MappingProxyType(attrs),
        ts=datetime(2025, 1, 6, 23, 45, tzinfo=UTC) - timedelta(minutes=rng.randint(0, 10_000)),
        duration_s=rng.random() * 900, count=rng.randint(1, 30), origin=rng.choice(ORIGINS), **fields,
    )
    return sig, plant


_BASES = getattr(g, "REASON_BASES", ("personal",))
_HAS_BASIS = {"basis", "subject"} <= {f.name for f in dataclasses.fields(GuardRequest)}


def generate(n_signals: int = N_SIGNALS, seed: int = SEED) -> Iterator[Case]:
    """Seeded cases until `n_signals` signals were made: request i enumerates consent purposes
    (all 2**len(PURPOSES) combinations), channel and log-in state; classes and disguises rotate."""
    rng = random.Random(seed)
    made = i = 0
    n_combos = 2 ** len(PURPOSES)
    now0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    while made < n_signals:
        combo = i % n_combos
        flags = {p: bool(combo >> k & 1) for k, p in enumerate(PURPOSES)}
        consent = consent_from_flags(flags, timezone=TIMEZONES[i % len(TIMEZONES)])
        channel = CHANNELS[(i // n_combos + i) % len(CHANNELS)]
        logged_in = bool((i // 7) % 2)
        k = min(1 + rng.randrange(3), n_signals - made)
        sigs, plants = [], []
        for j in range(k):
            cls = CLASSES[(made + j) % len(CLASSES)] if rng.random() < 0.85 else None
            s, p = _signal(rng, rng.choice(CHANNELS), cls)
            sigs.append(s)
            if p:
                plants.append(p)
        extra: dict[str, Any] = {}
        if _HAS_BASIS:
            basis = _BASES[i % len(_BASES)]
            extra = {"basis": basis, "subject": sigs[0] if basis != "personal" else None}
        now = now0 + timedelta(hours=rng.randint(0, 23))
        last = rng.choice(tuple(FRAGMENTS))
        params = {
            "item_ids": [s.item_id for s in sigs if s.item_id], "categories": [s.category for s in sigs],
            ITEM_ID: sigs[0].item_id, "items": [{ITEM_ID: s.item_id, "name": s.item_name} for s in sigs],
            "discount_pct": rng.randint(0, 50), "last_seen": rng.choice(FRAGMENTS[last])(rng),
        }
        plants.append(Plant(last, params["last_seen"], "param"))
        reason = GuardRequest(RECOMMENDATION_REASON, channel, consent, tuple(sigs), now=now,
                              logged_in=logged_in, **extra)
        nba = GuardRequest(NBA_MESSAGE, channel, consent, tuple(sigs), action=ACTIONS[i % len(ACTIONS)],
                           params=params, now=now, logged_in=logged_in)
        yield Case(reason, nba, tuple(plants), k)
        made += k
        i += 1


def _norm(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).casefold().split())


def _strings(v: Any) -> list[str]:
    if isinstance(v, dict | MappingProxyType):
        return [s for x in v.values() for s in _strings(x)]
    if isinstance(v, list | tuple):
        return [s for x in v for s in _strings(x)]
    return [] if v is None else [str(v)]


def output_of(d: g.GuardDecision) -> str:
    """Everything a decision lets out (offers are not about the person)."""
    return " | ".join([d.text, *_strings({k: v for k, v in d.params.items() if k not in g.OFFER_PARAMS})])


def leaks(req: GuardRequest, d: g.GuardDecision, plants: tuple[Plant, ...],
          policy: g.GuardPolicy) -> list[str]:
    """Why this decision leaks (empty when it does not), judged on what was planted."""
    out = output_of(d)
    low = _norm(out)
    own_screen = req.channel in OWN_SCREENS and req.logged_in
    found = []
    digits_ok = False
    for p in plants:
        if p.cls == "life_event" and own_screen:
            digits_ok = digits_ok or any(c.isdigit() for c in p.fragment)
            continue
        frag = _norm(p.fragment)
        if frag and re.search(rf"(?<![^\W_]){re.escape(frag)}(?![^\W_])", low):
            found.append(f"{p.cls} ({p.disguise or p.field}) {p.fragment!r} in {out!r}")
    if not digits_ok and re.search(r"\d", out):
        found.append(f"digit in {out!r}")
    if policy.sensitivity(out) == g.Sensitivity.SENSITIVE:
        found.append(f"sensitive term in {out!r}")
    return found


def test_no_adversarial_signal_leaks() -> None:
    policy = load_policy()
    for name in BASE_CATEGORIES + BASE_ITEMS + BRANDS:  # the generator's own premise: clean bases
        assert not g.scrub_problems(name, (), policy) and policy.sensitivity(name) == g.Sensitivity.NONE, name
    t0 = time.perf_counter()
    found: list[str] = []
    planted: Counter[str] = Counter()
    disguises: Counter[str] = Counter()
    named = channels = 0
    seen_channels, seen_levels, seen_combos = set(), set(), set()
    n_signals = 0
    for case in generate():
        n_signals += case.n_signals
        for p in case.plants:
            planted[p.cls] += 1
            disguises[p.disguise] += 1
        for req in (case.reason, case.nba):
            d = guard(req, policy)
            found += leaks(req, d, case.plants, policy)
            named += d.level > g.Specificity.NONE
        seen_channels.add(case.reason.channel)
        seen_levels.add(case.reason.consent.level)
        seen_combos.add(case.reason.consent.granted & frozenset(PURPOSES))
        channels += 1
    elapsed = time.perf_counter() - t0
    assert n_signals >= N_SIGNALS
    assert not found, f"{len(found)} leak(s) in {n_signals} signals, e.g.:\n" + "\n".join(found[:25])
    # the generator really covered everything (else 0 leaks would mean little)
    assert set(planted) == set(CLASSES) and min(planted.values()) >= 2_000, planted
    assert set(DISGUISES) <= set(disguises), disguises
    assert seen_channels == set(CHANNELS) and len(seen_levels) == 3
    # every combination of purposes (consent_from_flags may fold some personalization-off states together)
    assert len(seen_combos) >= 2 ** (len(PURPOSES) - 1)
    assert named >= 0.05 * 2 * channels, f"only {named} outputs named anything: the test would be vacuous"
    assert elapsed < 120, f"{elapsed:.0f} s"
