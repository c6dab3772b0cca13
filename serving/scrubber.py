"""The guard's text layer: sensitive-term matching, the scrubber, and what counts as a name. Pure.

Why a module of its own: the creepiness guard (`serving.guard`) decides *what* may be said; this module
decides whether a piece of text says something it must not. Everything here is a pure function of its
inputs (plus bounded memo caches), so the guard stays pure and the rules can be tested and benchmarked
on their own.

API:

    fold(text) -> str                        # NFKC, look-alikes to Latin, case-folded, no accents
    SensitiveMatcher(sensitive_terms, life_event_terms, safe_phrases).tier(text) -> Sensitivity
    scrub_problems(text, own_values=()) -> list[str]   # why a rendered text may not be shown
    safe_name(v) -> str | None               # a whitelisted field (category, item name, brand) or None
    display_category(path, language="en") -> str      # "Sports > Running shoes" -> "running shoes"

Sensitive terms (configured in `serving/guard.yaml`, `sensitive:`), per language, match whole words
of a text after the same normalisation, robust to case, accents, Unicode look-alikes and compatibility
forms, leetspeak, zero-width characters, the language's plural endings, and separators: a hyphen,
underscore, dot or apostrophe may sit anywhere inside a term ("sex-toys", "pregnancy_test",
"l.i.n.g.e.r.i.e"), a space only where the term has a space or a hyphen ("soutien gorge") or between
single letters ("l i n g e r i e"), and a term's gaps may also be left out ("sex toys": "sextoys"). A
space inside a word ("lin gerie") does not join it: two real words would join by accident ("Die
T-Shirts" would read "diet"). Markers on a term:

    word      whole words only; a single word of 8+ letters also inside a longer word (a compound:
              "Schwangerschaft" in "Frühschwangerschaftstest"), where a collision is unlikely
    word*     also as the first part of a longer word ("baby*": "Babynahrung", "babywear")
    *word     also as the last part of a longer word
    =word     only when it is the whole name or a whole "A > B" path segment ("=adult": "Adult",
              "Toys > Adult", but not "Adult bicycle helmets")

Safe phrases are ordinary names that contain a term ("medicine cabinet", "sports bra", "baby spinach"):
a term occurrence inside one does not count.

The scrubber refuses what a personalised text must never say, whatever the level: times and parts of
the day, weekdays and months, dates, durations, counts, a person's clothing and shoe sizes, street
addresses, postcodes, store codes, phone numbers, emails and urls (en, fr, de, es), plus the request's
own values. Product dimensions and product concepts pass ("55 inch TV", "King size duvet", "3/4
sleeve", "2-in-1", "1990s dress"), and so do fit ranges (petite, tall). Blocked on purpose, as body
sizes: "plus size" and "size-inclusive" (the word "size" outside a product-size phrase).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Final

__all__ = [
    "LANGUAGES", "Sensitivity", "SensitiveMatcher", "display_category", "fold", "safe_name", "scrub_problems",
    "skeleton",
]


class Sensitivity(IntEnum):
    """How much naming a category could hurt, least to most.

    LIFE_EVENT: reveals a life event (a pregnancy through baby products, a wedding, a move) to whoever
    reads a message over a shoulder; SENSITIVE: health, sex, body, beliefs, addictions, bereavement.
    """

    NONE = 0
    LIFE_EVENT = 1
    SENSITIVE = 2


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------
#: Format characters that render as nothing (zero-width, bidi controls, soft hyphen): removed, so that
#: "sex\u200btoys" reads "sextoys" and a bidi override cannot hide a word.
_FORMAT_CHARS: Final[dict[int, None]] = dict.fromkeys(
    [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0,
     *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065), *range(0x2066, 0x2070),
     *range(0xFE00, 0xFE10)]
)
#: Letters of other scripts that look Latin (a small explicit table in the spirit of Unicode's
#: confusables.txt, which no installed package ships). Applied before case folding, because upper
#: and lower case look like different Latin letters (Greek "Η" looks like H, "η" like n).
_CONFUSABLES: Final[dict[str, str]] = {
    # Cyrillic
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԁ": "D", "Ү": "Y", "Ԛ": "Q", "Ԝ": "W",
    "Һ": "H", "Ӏ": "I", "Ь": "b",
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d", "ү": "y", "ԛ": "q", "ԝ": "w", "һ": "h",
    "ӏ": "l", "ь": "b", "ї": "i", "ё": "e", "ɡ": "g",
    # Greek
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ς": "s",
    # Latin small capitals and other look-alikes NFKC leaves alone
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ғ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j",
    "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u",
    "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z", "ı": "i", "ȷ": "j", "ł": "l", "Ł": "L", "ø": "o", "Ø": "O",
    "đ": "d", "Đ": "D", "ħ": "h", "ŧ": "t", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "þ": "th",
    "ð": "d", "ŀ": "l",
}
_PRE_CASE: Final = str.maketrans({**_FORMAT_CHARS, **_CONFUSABLES})
#: Combining marks of Latin, Greek and Cyrillic (accents; other scripts keep theirs).
_COMBINING_RE: Final = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")
#: Leetspeak and typographic stand-ins, for term matching only (the scrubber needs its digits).
#: "l" and "1" both read "i": "1ingerie", "lingerie" and "iingerie" are the same word to a reader.
_LEET: Final = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a",
                              "$": "s", "€": "e", "!": "i", "¡": "i", "l": "i"})


def fold(text: str) -> str:
    """The form every comparison uses: NFKC (fullwidth and styled letters become plain), look-alike
    letters of other scripts become Latin, case folded, accents and format characters removed."""
    if text.isascii():
        return text.lower()
    t = unicodedata.normalize("NFKC", text).translate(_PRE_CASE).casefold()
    t = _COMBINING_RE.sub("", unicodedata.normalize("NFD", t))
    return unicodedata.normalize("NFC", t)


def skeleton(text: str) -> str:
    """`fold`, then leetspeak read as letters: the form sensitive terms are matched in."""
    return fold(text).translate(_LEET)


# ---------------------------------------------------------------------------------------------
# Word structure: letters joined across separators that cannot split a word
# ---------------------------------------------------------------------------------------------
_LETTERS_RE: Final = re.compile(r"[^\W\d_]+")
#: Separators that may sit inside an obfuscated or compound word ("sex-toys", "pregnancy_test",
#: "s.e.x", "women's"): the letters on both sides are read as one word.
_SOFT_GAP_RE: Final = re.compile(r"[-‐‑‒–—_.'’‘`´*·•~^]+")
#: Path and list separators: where an `=word` segment starts and ends.
_SEGMENT_RE: Final = re.compile(r"[>|/\\,;:()\[\]»›]")


class _Words:
    """A text as one string of letters with a single space where a word boundary cannot be crossed,
    and the positions where words (or soft-joined parts of words) start and end."""

    __slots__ = ("ends", "starts", "text")

    def __init__(self, sk: str) -> None:
        parts: list[str] = []
        starts: set[int] = set()
        ends: set[int] = set()
        pos = 0
        prev_end = -1
        prev_len = 0
        for m in _LETTERS_RE.finditer(sk):
            tok = m.group()
            if prev_end >= 0:
                gap = sk[prev_end:m.start()]
                joined = _SOFT_GAP_RE.fullmatch(gap) is not None or (
                    prev_len == 1 and len(tok) == 1 and gap.isspace())  # letter-spaced "s e x"
                if not joined:
                    parts.append(" ")
                    pos += 1
            starts.add(pos)
            parts.append(tok)
            pos += len(tok)
            ends.add(pos)
            prev_end, prev_len = m.end(), len(tok)
        self.text = "".join(parts)
        self.starts = starts
        self.ends = ends


def _joined(sk: str) -> str:
    return _Words(sk).text


# ---------------------------------------------------------------------------------------------
# Sensitive terms
# ---------------------------------------------------------------------------------------------
#: Inflections per language, applied to a term's first and last word (on the folded form):
#: (suffix to replace, replacement). "" replaces nothing. Why per language: one shared list would
#: turn English "bra" into "bran".
_INFLECTIONS: Final[Mapping[str, tuple[tuple[str, str], ...]]] = {
    "en": (("", "s"), ("", "es"), ("y", "ies"), ("f", "ves"), ("fe", "ves")),
    "fr": (("", "s"), ("", "x"), ("al", "aux"), ("", "e"), ("", "es"), ("eau", "eaux"), ("el", "elle"),
           ("el", "elles"), ("if", "ive"), ("if", "ives"), ("eux", "euse"), ("eux", "euses")),
    "de": (("", "e"), ("", "en"), ("", "n"), ("", "er"), ("", "s"), ("", "es"), ("", "ern"), ("", "nen"),
           ("e", "en"), ("", "innen")),
    "es": (("", "s"), ("", "es"), ("z", "ces"), ("o", "a"), ("o", "os"), ("o", "as"), ("on", "ones"),
           ("or", "ores")),
    "it": (("o", "i"), ("a", "e"), ("e", "i"), ("", "i")),
    "pt": (("", "s"), ("", "es"), ("m", "ns"), ("ao", "oes"), ("o", "a"), ("o", "os"), ("o", "as")),
    "nl": (("", "s"), ("", "en"), ("", "n")),
}
LANGUAGES: Final[tuple[str, ...]] = tuple(_INFLECTIONS)
#: A single-word term this long may also match inside a longer word (compounds), see the module doc.
_COMPOUND_MIN: Final = 8
_MAX_TERM_CHARS: Final = 60
_START_ANY: Final = 1  # may start inside a word
_END_ANY: Final = 2  # may end inside a word
_END: Final = ""  # trie key of a terminal node (a text character is never empty)
_CONFIG_KEYS: Final = ("categories", "life_event", "safe_phrases")
_CACHE_MAX: Final = 100_000

TermSpec = Mapping[str, Iterable[str]] | Iterable[str]


def _inflect(word: str, lang: str) -> set[str]:
    out = {word}
    for old, new in _INFLECTIONS[lang]:
        if word.endswith(old) and len(word) > len(old):
            out.add(word[: len(word) - len(old)] + new)
    return out


def _spellings(pieces: Sequence[str]) -> set[str]:
    """The pieces joined, each gap as a space or as nothing ("sex toys", "sextoys"; "soutien-gorge",
    "soutien gorge"). Many-piece phrases keep only the all-spaced and all-joined spellings."""
    if len(pieces) > 5:
        return {" ".join(pieces), "".join(pieces)}
    out = {pieces[0]}
    for piece in pieces[1:]:
        out = {x + " " + piece for x in out} | {x + piece for x in out}
    return out


def _term_forms(raw: str, lang: str, *, compounds: bool = True) -> tuple[set[str], int, bool]:
    """(joined spellings of every inflection, mode bits, whole-segment-only) of one configured term;
    `compounds`: a long single word may match inside longer words (not for safe phrases)."""
    body = raw.strip()
    alone = body.startswith("=")
    if alone:
        body = body[1:].strip()
    mode = 0
    if body.startswith("*"):
        mode |= _START_ANY
        body = body[1:].strip()
    if body.endswith("*"):
        mode |= _END_ANY
        body = body[:-1].strip()
    if alone and mode:
        raise ValueError("'=' (whole name only) cannot be combined with '*'")
    if "*" in body or "=" in body:
        raise ValueError("'*' only at the start or end of a term, '=' only at its start")
    if len(body) > _MAX_TERM_CHARS:
        raise ValueError(f"a term is at most {_MAX_TERM_CHARS} characters")
    folded = fold(body)
    pieces: list[str] = []
    spaced: list[bool] = []  # per gap between pieces: a space (True) or a soft separator
    prev_end = -1
    for m in _LETTERS_RE.finditer(folded):
        if prev_end >= 0:
            spaced.append(_SOFT_GAP_RE.fullmatch(folded[prev_end:m.start()]) is None)
        pieces.append(m.group())
        prev_end = m.end()
    if not pieces:
        raise ValueError("a term needs at least one letter")
    # endings go on the first and the last piece ("tests de grossesse", "soutiens-gorge", "sex toys")
    firsts = _inflect(pieces[0], lang)
    lasts = _inflect(pieces[-1], lang) if len(pieces) > 1 else {""}
    forms: set[str] = set()
    for first in firsts:
        for last in lasts:
            ps = [first, *pieces[1:-1], last] if len(pieces) > 1 else [first]
            forms |= {_joined(skeleton(x)) for x in _spellings(ps)}
    single_word = not any(spaced)
    if compounds and single_word and sum(map(len, pieces)) >= _COMPOUND_MIN and not alone:
        mode |= _START_ANY | _END_ANY
    return forms, mode, alone


def _as_language_map(spec: TermSpec, where: str) -> dict[str, tuple[str, ...]]:
    """`{language: [terms]}` (as in guard.yaml) or a plain list of English terms."""
    if isinstance(spec, str):
        raise ValueError(f"{where} must be a list of terms or a mapping of language -> list, not a string")
    items = spec.items() if isinstance(spec, Mapping) else (("en", spec),)
    out: dict[str, tuple[str, ...]] = {}
    for lang, terms in items:
        if lang not in _INFLECTIONS:
            raise ValueError(f"{where}: unknown language {lang!r} (expected one of {', '.join(LANGUAGES)})")
        if isinstance(terms, str) or not isinstance(terms, Iterable):
            raise ValueError(f"{where}.{lang} must be a list of terms")
        lst = tuple(terms)
        for i, t in enumerate(lst):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"{where}.{lang}[{i}] must be a non-empty string, got {t!r}")
        out[str(lang)] = lst
    return out


class SensitiveMatcher:
    """Classifies category and item names into `Sensitivity` tiers (see the module doc for the rule).

    Memoised with a bounded cache: the same few hundred category names come back on every request.
    Thread-safe in CPython (a lost cache write only costs a recomputation).
    """

    __slots__ = ("_alone", "_cache", "_config", "_heads", "_inner", "_max_len", "_p3", "_safe", "_safe_p3",
                 "_trie")

    def __init__(self, sensitive_terms: TermSpec = (), life_event_terms: TermSpec = (),
                 safe_phrases: TermSpec = (), *, where: str = "sensitive") -> None:
        given = (sensitive_terms, life_event_terms, safe_phrases)
        specs = [_as_language_map(s, f"{where}.{key}") for s, key in zip(given, _CONFIG_KEYS, strict=True)]
        self._config = tuple(tuple(sorted(s.items())) for s in specs)
        self._trie: dict = {}  # every term, walked from word starts
        self._inner: dict = {}  # terms that may start inside a word
        self._safe: dict = {}
        self._alone: dict[str, int] = {}
        self._max_len = 0
        self._cache: dict[str, Sensitivity] = {}
        tiers = (Sensitivity.SENSITIVE, Sensitivity.LIFE_EVENT, None)  # None: safe phrases
        for tier, spec, key in zip(tiers, specs, _CONFIG_KEYS, strict=True):
            for lang, terms in spec.items():
                for i, raw in enumerate(terms):
                    try:
                        forms, mode, alone = _term_forms(raw, lang, compounds=tier is not None)
                    except ValueError as exc:
                        raise ValueError(f"{where}.{key}.{lang}[{i}] {raw!r}: {exc}") from None
                    if tier is None:
                        if mode or alone:
                            raise ValueError(f"{where}.{key}.{lang}[{i}] {raw!r}: a safe phrase takes no "
                                             "marker")
                        for f in forms:
                            _insert(self._safe, f, (0, 0))
                        continue
                    for f in forms:
                        if alone:
                            self._alone[f] = max(self._alone.get(f, 0), int(tier))
                            continue
                        self._max_len = max(self._max_len, len(f))
                        _insert(self._trie, f, (int(tier), mode))
                        if mode & _START_ANY:
                            _insert(self._inner, f, (int(tier), mode))
        # where a walk can succeed: the first three characters of a form (or a whole shorter form)
        self._p3 = _heads(self._trie)
        self._safe_p3 = _heads(self._safe)
        self._heads = _heads(self._inner)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SensitiveMatcher) and other._config == self._config

    def __hash__(self) -> int:
        return hash(self._config)

    def __repr__(self) -> str:
        counts = [sum(len(t) for _, t in c) for c in self._config]
        return f"SensitiveMatcher(sensitive={counts[0]}, life_event={counts[1]}, safe_phrases={counts[2]})"

    def terms(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """The configured terms, as given: {"categories"|"life_event"|"safe_phrases": {language: terms}}."""
        return {key: dict(c) for key, c in zip(_CONFIG_KEYS, self._config, strict=True)}

    def tier(self, text: str | None) -> Sensitivity:
        """The highest tier of any term in `text` (NONE for None or empty)."""
        if not text:
            return Sensitivity.NONE
        hit = self._cache.get(text)
        if hit is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            hit = self._cache[text] = self._classify(text)
        return hit

    def _classify(self, text: str) -> Sensitivity:
        sk = skeleton(text)
        w = _Words(sk)
        s, starts, ends = w.text, w.starts, w.ends
        order = sorted(starts)
        sp3 = self._safe_p3
        safe = [(a, b) for a in order if _may_start(s, a, sp3) for b in _walk_whole(self._safe, s, a, ends)]
        best = 0
        p3 = self._p3
        for p in order:
            if not _may_start(s, p, p3):
                continue
            best = max(best, _walk(self._trie, s, p, True, ends, safe, self._max_len))
            if best == Sensitivity.SENSITIVE:
                return Sensitivity.SENSITIVE
        if self._inner:
            heads = self._heads
            for p in range(len(s)):
                if p not in starts and _may_start(s, p, heads):
                    best = max(best, _walk(self._inner, s, p, False, ends, safe, self._max_len))
                    if best == Sensitivity.SENSITIVE:
                        return Sensitivity.SENSITIVE
        if self._alone and any(f in s for f in self._alone):
            for seg in _SEGMENT_RE.split(sk):
                j = _joined(seg)
                if j:
                    best = max(best, self._alone.get(j, 0))
        return Sensitivity(best)


def _heads(trie: dict, depth: int = 3) -> frozenset[str]:
    """Every path of `depth` characters from the root, and every shorter complete form."""
    out: set[str] = set()

    def visit(node: dict, path: str) -> None:
        if len(path) == depth:
            out.add(path)
            return
        for c, child in node.items():
            if c == _END:
                out.add(path)
            else:
                visit(child, path + c)

    visit(trie, "")
    out.discard("")
    return frozenset(out)


def _may_start(s: str, p: int, heads: frozenset[str]) -> bool:
    return s[p:p + 3] in heads or s[p:p + 2] in heads or s[p:p + 1] in heads


def _insert(trie: dict, form: str, entry: tuple[int, int]) -> None:
    node = trie
    for c in form:
        node = node.setdefault(c, {})
    node.setdefault(_END, []).append(entry)


def _walk(trie: dict, s: str, p: int, at_start: bool, ends: set[int], safe: list[tuple[int, int]],
          max_len: int) -> int:
    """The highest tier of a valid term occurrence starting at `p`."""
    node = trie
    best = 0
    stop = min(len(s), p + max_len)
    i = p
    while i < stop:
        node = node.get(s[i])
        if node is None:
            break
        i += 1
        entries = node.get(_END)
        if entries is None:
            continue
        at_end = i in ends
        for tier, mode in entries:
            if tier > best and (at_start or mode & _START_ANY) and (at_end or mode & _END_ANY) and not any(
                    a <= p and i <= b for a, b in safe):
                best = tier
    return best


def _walk_whole(trie: dict, s: str, p: int, ends: set[int]) -> list[int]:
    """Ends of the whole-word phrases of `trie` that start at `p`."""
    node = trie
    out = []
    i = p
    while i < len(s):
        node = node.get(s[i])
        if node is None:
            break
        i += 1
        if _END in node and i in ends:
            out.append(i)
    return out


# ---------------------------------------------------------------------------------------------
# The scrubber: what a rendered text may never say
# ---------------------------------------------------------------------------------------------
def _words(*groups: str) -> frozenset[str]:
    return frozenset(w for g in groups for w in g.split())


# Weekdays and months, full and unambiguously abbreviated (en, fr, de, es; folded: no accents).
_WEEKDAYS: Final = _words(
    "monday tuesday wednesday thursday friday saturday sunday mondays tuesdays wednesdays thursdays",
    "fridays saturdays sundays weekend weekends weekday weekdays weeknight weeknights tue tues wed weds",
    "thu thur thurs fri lundi mardi mercredi jeudi vendredi samedi dimanche lundis mardis mercredis jeudis",
    "vendredis samedis dimanches montag dienstag mittwoch donnerstag freitag samstag sonnabend sonntag",
    "montags dienstags mittwochs donnerstags freitags samstags sonntags wochenende wochenenden werktag",
    "werktags wochentag lunes martes miercoles jueves viernes sabado sabados domingo domingos jue",
)
_MONTHS: Final = _words(
    "january february april june july september october november december jan feb apr jun jul aug sep sept",
    "oct nov dec janvier fevrier avril juin juillet aout septembre octobre novembre decembre janv fevr avr",
    "juil januar jaenner februar marz maerz juni juli oktober dezember okt dez enero febrero marzo",
    "abril junio julio agosto septiembre setiembre octubre noviembre diciembre ene abr dic",
)
#: Abbreviations that are also ordinary words ("Sun hats", "mon premier", "Mars bar", "Mayo"): only
#: with a dot ("Sun.", "Mo.") or a number next to them ("Sat 9am", "le 3 mars").
_AMBIGUOUS_DAYS: Final = ("mon", "sat", "sun", "lun", "mar", "mer", "jeu", "ven", "sam", "dim", "mo", "di",
                          "mi", "do", "fr", "sa", "so", "mie", "vie", "sab", "dom")
_AMBIGUOUS_MONTHS: Final = ("march", "may", "august", "mars", "mai", "mayo", "ago", "mar", "marz")
_TIME_WORDS: Final = _words(
    "tonight tonite midnight noon midday yesterday today tomorrow",
    "aujourd demain minuit heute gestern morgens abends nachts mitternacht mittags vormittags nachmittags",
    "vorgestern uebermorgen ubermorgen hoy ayer anoche anteayer manana medianoche madrugada mediodia",
    "pm",
)
_DURATION_WORDS: Final = _words(
    "seconds secs minutes mins hours hrs sekunden minuten stunden std secondes heures segundos minutos horas",
)
_COUNT_WORDS: Final = _words(
    "times twice thrice repeatedly again fois veces zweimal dreimal viermal funfmal fuenfmal mehrmals",
    "nochmal nochmals erneut wieder encore nuevamente",
    "visit visits visited views revisit revisited visites besuche besucht aufrufe visitas",
)
_SIZE_WORDS: Final = _words(
    "size sizes sized sizing taille tailles pointure groesse grosse groessen grossen konfektionsgrosse",
    "schuhgrosse schuhgroesse talla tallas xxs xs xl xxl xxxl xxxxl 2xl 3xl 4xl 5xl 6xl ubergrosse",
    "ubergrossen",
)
_PLACE_WORDS: Final = _words(
    "store stores branch mall boutique nearby aisle latitude longitude magasin magasins succursale",
    "filiale filialen tienda tiendas sucursal sucursales",
)
#: German "Größe" (size) folds to "grosse", like "große" (big): the adjective is only a size with a
#: size after it, so the plain folded spelling is checked in context (see `_DIGIT_RE`), not as a word.
_GERMAN_BIG: Final = frozenset({"grosse", "grossen"})
_FORBIDDEN: Final[Mapping[str, str]] = {
    **dict.fromkeys(_WEEKDAYS | _MONTHS, "weekday or month"),
    **dict.fromkeys(_TIME_WORDS, "time or part of the day"),
    **dict.fromkeys(_DURATION_WORDS, "duration"),
    **dict.fromkeys(_COUNT_WORDS, "count"),
    **dict.fromkeys(_SIZE_WORDS - _GERMAN_BIG, "size"),
    **dict.fromkeys(_PLACE_WORDS, "place"),
}

#: Ordinary names that contain a forbidden word: removed before the words are checked.
_SAFE_TEXT_RE: Final = re.compile(
    r"\b(?:(?:super\s+)?king|queen|double|single|twin|travel|full|mini|trial|sample|pocket|bite|life|fun"
    r"|family|one|compact|regular|standard|economy|jumbo|party|snack|hand|purse)[\s-]+sized?\b"
    r"|\btaille\s+(?:haute|basse|unique|elastiquee?|ajustable|reglable)s?\b|\btalla\s+unica\b"
    r"|\b(?:black\s+friday|cyber\s+monday|mardi\s+gras|good\s+friday|boxing\s+day)\b"
    r"|\bmidnight\s+(?:blue|black|navy|green|purple|oil|sun)\b"
    r"|\bweekend(?:er)?\s+(?:bag|holdall|duffel|duffle|case|tote)s?\b|\bweek[\s-]?end\s+bags?\b"
    r"|\bstore\s+cupboard\b|\bsunday\s+roast\b|\bday\s+of\s+the\s+dead\b|\bsept\s+nains\b"
    r"|\b(?:carte|cartes)\s+de\s+visite\b|\bhappy\s+hour\b|\btimes\s+tables?\b"
    r"|\btiendas?\s+de\s+campana\b",  # Spanish tents
    re.IGNORECASE,
)
#: Phrases about when something happened: "this evening", "ce soir", "heute Abend", "esta noche".
_PHRASES: Final[tuple[str, ...]] = (
    # en
    "this morning", "this afternoon", "this evening", "last night", "late night", "late at night", "at night",
    "in the evening", "in the morning", "in the afternoon", "last week", "last month", "this week",
    "earlier today", "the other day", "again and again", "near you", "near me", "close to you",
    "o clock",
    # fr
    "ce soir", "hier soir", "hier matin", "cette nuit", "la nuit derniere", "ce matin", "cet apres midi",
    "tard le soir", "tard dans la nuit", "en soiree", "la semaine derniere", "a nouveau", "de nouveau",
    "une fois de plus", "pres de chez vous", "pres de chez toi", "a proximite", "fin de semaine",
    # de
    "heute abend", "heute nacht", "heute morgen", "heute fruh", "gestern abend", "spat abends",
    "spaet abends", "spat nachts", "letzte nacht", "letzte woche", "am abend", "in der nacht",
    "noch einmal", "in ihrer nahe", "in deiner nahe", "in der nahe",
    # es
    "esta noche", "esta manana", "esta tarde", "ayer por la noche", "de madrugada", "a medianoche",
    "por la noche", "por la manana", "por la tarde", "la semana pasada", "otra vez", "de nuevo",
    "cerca de ti", "cerca de usted", "centro comercial", "fin de semana",
)


def _phrase_re(phrases: Iterable[str]) -> re.Pattern[str]:
    alts = sorted((r"[\s'’.-]+".join(map(re.escape, p.split())) for p in phrases), key=len, reverse=True)
    return re.compile(r"(?<![^\W_])(?:" + "|".join(alts) + r")(?![^\W_])")


_PHRASE_RE: Final = _phrase_re(_PHRASES)
#: A phrase is only looked for when the text has one of these words (a regex alternation is slow).
_PHRASE_TRIGGERS: Final = frozenset(max(p.split(), key=len) for p in _PHRASES)

_NUMBER_WORDS: Final = _words(
    "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty",
    "several",
    "un une deux trois quatre cinq six sept huit neuf dix onze douze quinze vingt trente ein eine zwei drei",
    "vier funf fuenf sechs sieben acht neun zehn elf zwolf zwoelf zwanzig dreissig uno una dos tres cuatro",
    "cinco seis siete ocho nueve diez once doce quince veinte treinta",
)
_UNITS: Final = (
    r"times|fois|mal|veces|vez|seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|nights?|weeks?|months?|years?"
    r"|sekunden?|minuten?|stunden?|std|tagen?|tage|nachte|wochen?|monaten?|monate|jahren?|jahre|secondes?"
    r"|heures?|jours?|nuits?|semaines?|mois|ans|annees?|segundos?|minutos?|horas?|dias?|noches?|semanas?"
    r"|meses|mes|anos?|am|pm|uhr"
)
_NUMBER_UNIT_RE: Final = re.compile(rf"\b(?:{'|'.join(sorted(_NUMBER_WORDS))})[\s-]+(?:{_UNITS})\b")

_MONTH_ALT: Final = "|".join(sorted({*(w for w in _MONTHS), *_AMBIGUOUS_MONTHS}, key=len, reverse=True))
_DAY_ALT: Final = "|".join(sorted({*(w for w in _WEEKDAYS), *_AMBIGUOUS_DAYS}, key=len, reverse=True))
_CITIES: Final = (
    "paris|lyon|marseille|toulouse|nice|nantes|strasbourg|montpellier|bordeaux|lille|rennes|berlin|hamburg"
    "|munchen|muenchen|munich|koln|koeln|cologne|frankfurt|stuttgart|dusseldorf|duesseldorf|leipzig|dresden"
    "|hannover|nurnberg|bremen|essen|dortmund|madrid|barcelona|valencia|sevilla|zaragoza|malaga|bilbao"
    "|murcia|palma|alicante|new york|los angeles|chicago|houston|phoenix|philadelphia|san antonio|san diego"
    "|dallas|austin|boston|seattle|denver|miami|atlanta|london|manchester|birmingham|glasgow|edinburgh"
    "|bristol|liverpool|leeds|milano|roma|wien|zurich|bruxelles|brussels|amsterdam|lisboa"
)
_US_STATES: Final = (
    "al|ak|az|ar|ca|co|ct|de|fl|ga|hi|id|il|in|ia|ks|ky|la|me|md|ma|mi|mn|ms|mo|mt|ne|nv|nh|nj|nm|ny|nc|nd"
    "|oh|ok|or|pa|ri|sc|sd|tn|tx|ut|vt|va|wa|wv|wi|wy|dc"
)
_CUP: Final = r"(?:aa|a|b|c|d|dd|ddd|e|f|ff|g|gg|h|hh|j|jj|k)"
#: Patterns with a digit, only run when the text has one. Each alternative is named for the audit.
_DIGIT_PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    # times: 11:45, 9h30, 9 h 30; 9h, 23h; 9am, 11.45pm, 9 a.m.; 14 Uhr, 9 heures
    ("time", r"(?<![\d.,:])(?:[01]?\d|2[0-3])\s?[:h]\s?[0-5]\d(?![\d%])"),
    ("time", r"(?<![\d.,])(?:[01]?\d|2[0-3])\s?h(?![^\W\d_])"),
    ("time", r"(?<![\d.,])\d{1,2}(?:[:.]\d{2})?\s?(?:a\.?\s?m|p\.?\s?m)\b\.?"),
    ("time", r"(?<![\d.,])\d{1,2}(?:[:.]\d{2})?\s?(?:uhr|heures?|hrs?|horas?|hs)\b"),
    # dates: 2025-01-06; 06/01/2025, 6.1.25; 6.1. (German); 1/6 (proper fractions are taken out first);
    # 6 Jan, le 3 mars, 3 de marzo; Jan 6, Sept 3rd; Mon 9am, Sun 12
    ("date", r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),
    ("date", r"\b\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})\b"),
    ("date", r"(?<![\d.,])\d{1,2}\.\d{1,2}\.(?!\d)"),
    ("date", r"(?<![\d/.,])\d{1,2}/\d{1,2}(?![\d/])"),
    ("date", rf"\b\d{{1,2}}(?:st|nd|rd|th|er|e|eme|o|a)?\.?\s?(?:de\s|of\s)?(?:{_MONTH_ALT})\b"),
    ("date", rf"\b(?:{_MONTH_ALT})\.?\s?\d{{1,2}}(?:st|nd|rd|th)?\b"),
    ("date", rf"\b(?:{_DAY_ALT})\.?\s?\d"),
    # durations and counts: 7 minutes, 3 Std., 3 times; 420s, 5 min (not "1990s"); 3x (not 4x4, 10x50), x3
    ("duration", rf"(?<![\d.,])\d+(?:[.,]\d+)?\s?(?:{_UNITS})\b"),
    ("duration", r"\b(?!(?:1[89]\d0|20[0-2]0|[1-9]0)s\b)\d+\s?(?:s|sec|min)\b"),
    ("count", r"(?<![\d.,x])\b\d+\s?x\b(?!\s?\d)"),
    ("count", r"\bx\s?\d+\b(?![x\d.,])"),
    # a person's sizes: 32B, 75C; W32 L34, 32W 34L; 32x34 (jeans); EU 42, UK 9, US 10.5 (not a UK 3-pin
    # plug); 42 EU; size 10, Größe 40, Gr. M; 3-6 months, 8-9 ans (children's sizes)
    ("size", rf"\b(?:28|30|32|34|36|38|40|42|44|46|48|65|70|75|80|85|90|95|100|105|110){_CUP}\b"),
    ("size", r"\bw\s?\d{2}\b(?:\s?[/x]?\s?l\s?\d{2}\b)?|\b\d{2}\s?w\s?[/x]?\s?\d{2}\s?l\b"),
    ("size", r"\b(?:2[6-9]|3\d|4[0-4])\s?x\s?(?:2[6-9]|3[0-6])\b"),
    ("size", r"\b(?:eu|uk|us|fr|it|jp|au)\s?\d{1,2}(?:[.,]5)?\b(?!\s?-?\s?(?:pin|prong|way|gang|plug))"),
    ("size", r"\b\d{1,2}(?:[.,]5)?\s?(?:eu|uk|us)\b"),
    ("size", r"\b(?:size|sizes|taille|tailles|talla|tallas|pointure|gr|grosse|groesse)\.?"
             r"\s?:?\s?(?:\d|xx?s\b|xx?l\b|[sml]\b)"),
    ("size", r"\b\d{1,2}\s?[-/]\s?\d{1,2}\s?"
             r"(?:years?|yrs?|months?|mths?|ans|mois|jahre|monate|anos|meses)\b"),
    # street addresses: 221B Baker Street; 12 Abbey Road (not "16 inch road bike"); 12 rue de Rivoli;
    # Hauptstraße 5; Calle Mayor 3
    ("address", r"\b\d{1,5}[a-z]?,?\s+(?:[^\W\d_]+\s+){1,3}"
                r"(?:street|st|avenue|ave|boulevard|blvd|lane|ln|terrace|crescent)\b"),
    ("address", r"\b\d{1,5}[a-z]?,?\s+(?:[^\W\d_]+\s+){1,3}(?:road|rd)\b"
                r"(?!\s?(?:bikes?|cycling|shoes?|running|tyres?|tires?|helmets?|racing|trip))"),
    ("address", r"\b\d{1,4}(?:\s?(?:bis|ter))?,?\s(?:rue|avenue|av|bd|boulevard|allee|impasse|chemin|quai"
                r"|route|place\s(?:de|du|des|d)|square|passage)\b"),
    ("address", r"\b[^\W\d_]*(?:strasse|str|gasse|platz|allee|damm|ufer|chaussee)\.?\s?\d{1,4}[a-z]?\b"),
    ("address", r"(?:\bcalle|\bc/|\bavenida|\bavda|\bpaseo|\bplaza|\bpza|\bcarrer|\bcamino|\bronda"
                r"|\btravesia|\bcarretera|\bctra)\.?\s?(?:[^\W\d_]+\s){0,3}?\d{1,4}\b"),
    # postcodes: ZIP+4; NY 10001; SW1A 1AA (not "PS5 2TB"); 75001 Paris
    ("postcode", r"\b\d{5}-\d{4}\b"),
    ("postcode", rf"\b(?:{_US_STATES}),?\s\d{{5}}\b"),
    ("postcode", r"\b[a-z]{1,2}\d[a-z\d]?\s\d(?!gb|tb|mb|kb|pk|pc|hp|xl|in|ft|lb)[abd-hjlnp-uw-z]{2}\b"),
    ("postcode", rf"\b\d{{4,5}}\s(?:{_CITIES})\b|\b(?:{_CITIES}),?\s\d{{4,5}}\b"),
    # store codes: store #123, Filiale 12; STR-0042, #12
    ("store code", r"\b(?:store|shop|branch|outlet|magasin|boutique|filiale|geschaft|geschaeft|tienda"
                   r"|sucursal|local|loja|negozio)\s?(?:#|no\.?|n°|nº|nr\.?|num\.?|number)?\s?\d+"),
    ("store code", r"\b(?:st|str|sto|stor|shp|mag|fil|tda|suc|loc)[-_#]\d{2,}\b|#\s?\d"),
    # phone numbers (a match counts with 8+ digits) and coordinates
    ("phone", r"(?:\+|\b00)?\d[\d\s().-]{7,}\d"),
    ("coordinates", r"-?\d{1,3}\.\d{4,}"),
)
_DIGIT_RE: Final = re.compile("|".join(f"(?P<g{i}>{p})" for i, (_, p) in enumerate(_DIGIT_PATTERNS)))
_DIGIT_KINDS: Final = {f"g{i}": k for i, (k, _) in enumerate(_DIGIT_PATTERNS)}
_FRACTION_RE: Final = re.compile(r"(?<![\d/])([1-9]|1[0-5])/(2|3|4|8|16)(?![\d/])")


def _no_fractions(f: str) -> str:
    """Proper fractions ("3/4 sleeve", "7/8 leggings", "1/2 zip") taken out before dates are looked for."""
    return _FRACTION_RE.sub(lambda m: " " if int(m[1]) < int(m[2]) else m[0], f)


_HAS_DIGIT: Final = re.compile(r"\d")
_CONTEXT_RE: Final = re.compile(
    rf"\b(?:{'|'.join(_AMBIGUOUS_DAYS)})\.(?![^\W_])"  # "Sun.", "Mo."
    r"|\b(?:size|sizes|taille|tailles|talla|tallas|pointure|gr|grosse|groesse)\.?\s?:?\s?"
    r"(?:xx?s|s|m|l|xx?l)\b"  # "Gr. L", "taille M"
    r"|\bin\s(?:xx?s|s|m|l|xx?l)(?=\s*(?:$|[|,)]))"  # "in M" at the end of a name
)
#: A letter size standing alone: "(M)", "S/M", "- XL" or ", L" closing a name.
_LETTER_SIZE_RE: Final = re.compile(
    r"[(\[]\s?(?:xx?s|s|m|l|xx?l|\d?xl)\s?[)\]]"
    r"|(?<![^\W_])(?:xx?s|s|m|l|xx?l)\s?/\s?(?:xx?s|s|m|l|xx?l)(?![^\W_])"
    r"|(?:\s[-–—/|,]\s?|,\s?)(?:s|m|l)\s*(?=$|\|)"
)
_CONTACT_RE: Final = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|@[^\W_]|https?:|://|\bwww\."
    r"|\b[\w-]+\.(?:com|net|org|io|co|uk|fr|de|es|it|eu|shop|store|info|biz|app|online|site)\b"
)
#: Characters without which `_CONTACT_RE` cannot match (it is only run when one is present).
_CONTACT_HINTS: Final = ("@", "://", "www.", ".")
_WORD_RE: Final = re.compile(r"[^\W_]+")
_SCRUB_CACHE: dict[str, tuple[tuple[str, ...], str, frozenset[str]]] = {}


def _generic_problems(f: str) -> tuple[str, ...]:
    """Problems of a folded text that do not depend on the request (memoised by the caller)."""
    found: dict[str, None] = {}
    words = set(_WORD_RE.findall(f))
    hits = words.intersection(_FORBIDDEN)
    if hits:
        cleaned = _SAFE_TEXT_RE.sub(" ", f)
        if cleaned != f:
            hits = set(_WORD_RE.findall(cleaned)).intersection(_FORBIDDEN)
        for w in sorted(hits):
            found[_FORBIDDEN[w]] = None
    if not words.isdisjoint(_PHRASE_TRIGGERS) and _PHRASE_RE.search(f):
        found["time, count or place phrase"] = None
    if not words.isdisjoint(_NUMBER_WORDS) and _NUMBER_UNIT_RE.search(f):
        found["count or duration in words"] = None
    if _CONTEXT_RE.search(f):
        found["weekday or size in context"] = None
    if _LETTER_SIZE_RE.search(f):
        found["size"] = None
    if any(h in f for h in _CONTACT_HINTS) and _CONTACT_RE.search(f):
        found["email, handle or url"] = None
    if _HAS_DIGIT.search(f):
        for m in _DIGIT_RE.finditer(_no_fractions(f)):
            kind = _DIGIT_KINDS[m.lastgroup or ""]
            if kind == "phone" and sum(c.isdigit() for c in m.group()) < 8:
                continue
            found[kind] = None
    return tuple(found)


_OWN_CACHE: dict[str, tuple[str, tuple[str, ...]]] = {}


def _own_problem(f: str, words: frozenset[str], values: Iterable[str]) -> bool:
    for v in values:
        if not v:
            continue
        hit = _OWN_CACHE.get(v)
        if hit is None:
            if len(_OWN_CACHE) >= _CACHE_MAX:
                _OWN_CACHE.clear()
            fv = fold(str(v)).strip()
            hit = _OWN_CACHE[v] = (fv, tuple(_WORD_RE.findall(fv)))
        fv, parts = hit
        if (len(fv) >= 4 and fv in f) or (parts and words.issuperset(parts)):
            return True
    return False


def scrub_problems(text: str, own_values: Iterable[str] = ()) -> list[str]:
    """Why `text` may not be shown (empty when it is clean): times and parts of the day, weekdays,
    months, dates, durations, counts, sizes, addresses, postcodes, store codes, phone numbers, emails
    and urls, in English, French, German and Spanish, after `fold`; and any of `own_values` (the
    request's store ids, locations, sizes, colours), as a whole phrase or as all of its words.

    The generic part is memoised by text (a bounded cache): the same reasons come back all the time.
    """
    hit = _SCRUB_CACHE.get(text)
    if hit is None:
        if len(_SCRUB_CACHE) >= _CACHE_MAX:
            _SCRUB_CACHE.clear()
        f = fold(text)
        hit = _SCRUB_CACHE[text] = (_generic_problems(f), f, frozenset(_WORD_RE.findall(f)))
    problems = list(hit[0])
    if own_values and _own_problem(hit[1], hit[2], own_values):
        problems.append("store, location, size or colour of the request")
    return problems


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------
#: Longest whitelisted field (a full category path fits; a paragraph does not).
MAX_NAME_CHARS: Final = 120
_NAME_PUNCT: Final = " >’‘–—&+/.,'-()%!:\"°®™©"
_FAST_NAME_RE: Final = re.compile(r"[^\W_](?:[^\W_]|[ >’‘–—&+/.,'()%!:\"°®™©-])*")
_URLISH_RE: Final = re.compile(r"://|\bwww\.|@|\b[\w-]+\.(?:com|net|org|io|shop|store|info|biz|app)\b",
                               re.IGNORECASE)


_NAME_CACHE: dict[str, bool] = {}


def safe_name(v: object) -> str | None:
    """`v` when it looks like a name (letters of any script, digits, spaces and ordinary punctuation,
    `>` as a path separator, at most `MAX_NAME_CHARS`), else None: a control or format character
    (zero-width, bidi), markup, a url or an email is never rendered. Memoised (bounded)."""
    if not isinstance(v, str):
        return None
    ok = _NAME_CACHE.get(v)
    if ok is None:
        if len(_NAME_CACHE) >= _CACHE_MAX:
            _NAME_CACHE.clear()
        ok = _NAME_CACHE[v] = _looks_like_name(v)
    return v if ok else None


def _looks_like_name(v: str) -> bool:
    if not v or len(v) > MAX_NAME_CHARS or v != v.strip():
        return False
    if _FAST_NAME_RE.fullmatch(v) is None:
        if v.isascii() or unicodedata.category(v[0])[0] not in "LN":
            return False
        for c in v:
            if not (unicodedata.category(c)[0] in "LNM" or c in _NAME_PUNCT or c == "\u00a0"):
                return False
    return _URLISH_RE.search(v) is None


_PATH_SEP_RE: Final = re.compile(r"\s*>\s*")
_BRAND_SEGMENTS: Final = frozenset({"brand", "brands", "marque", "marques", "marke", "marken", "marca",
                                    "marcas"})
#: Languages whose nouns keep their capital inside a sentence.
_CAPITALISED_NOUNS: Final = frozenset({"de"})


_DISPLAY_CACHE: dict[tuple[str, str], str] = {}


def display_category(path: str, language: str = "en") -> str:
    """How a category path is said in a sentence: its leaf ("Sports > Running shoes" -> "running
    shoes"), with the first letter lower-cased only when the leaf is written in sentence case
    ("Running shoes"). Kept as written: Title Case ("Running Shoes": a proper noun cannot be told from
    a style), acronyms and mixed case ("TV stands", "iPhone cases"), a leaf under a brand segment
    ("Brands > Nike"), and German, whose nouns are capitalised. Memoised (bounded)."""
    key = (path, language)
    said = _DISPLAY_CACHE.get(key)
    if said is None:
        if len(_DISPLAY_CACHE) >= _CACHE_MAX:
            _DISPLAY_CACHE.clear()
        said = _DISPLAY_CACHE[key] = _display(path, language)
    return said


def _display(path: str, language: str) -> str:
    segments = [s for s in _PATH_SEP_RE.split(path.strip()) if s]
    if not segments:
        return ""
    leaf = segments[-1].strip()
    if language in _CAPITALISED_NOUNS or any(s.strip().lower() in _BRAND_SEGMENTS for s in segments[:-1]):
        return leaf
    words = leaf.split()
    first = words[0]
    sentence_case = first[:1].isupper() and (len(first) == 1 or first[1:].islower()) and not any(
        w[:1].isupper() for w in words[1:])
    if not sentence_case or any(c.isdigit() for c in first):
        return leaf
    return leaf[0].lower() + leaf[1:]
