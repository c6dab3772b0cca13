"""Known answers and corpus checks for the guard's text layer (serving/scrubber.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serving import guard as g
from serving import scrubber
from serving.guard import PolicyError, load_policy, policy_from_dict
from serving.scrubber import (
    SensitiveMatcher,
    Sensitivity,
    display_category,
    fold,
    safe_name,
    scrub_problems,
)

POLICY = load_policy()
DATA = Path(__file__).resolve().parents[1] / "data"


def _lines(name: str) -> list[str]:
    return [
        line.rstrip("\n")
        for line in (DATA / name).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


# --------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("ＬＩＮＧＥＲＩＥ", "lingerie"),  # fullwidth (NFKC)
        ("Lіngеrіе", "lingerie"),  # Cyrillic і and е
        ("ΡΑΡΙΣ", "papiσ"),  # Greek capitals that look Latin become Latin; Σ does not
        ("Größe", "grosse"),  # ß case-folds, umlaut folds
        ("Médicaments", "medicaments"),
        ("sex\u200btoys", "sextoys"),  # zero-width space
        ("\u202eabc", "abc"),  # bidi override
        ("𝐬𝐞𝐱", "sex"),  # mathematical bold
        ("Œuvre", "oeuvre"),
    ],
)
def test_fold(raw: str, folded: str) -> None:
    assert fold(raw) == folded


# ------------------------------------------------------------------------------------------ sensitive terms
def _matcher(**kw) -> SensitiveMatcher:
    return SensitiveMatcher(kw.get("sensitive", ()), kw.get("life", ()), kw.get("safe", ()))


def test_whole_words_inflections_and_separators() -> None:
    m = _matcher(sensitive={"en": ["lingerie", "sex toys", "bra", "pregnancy"]})
    for yes in (
        "Lingerie",
        "LINGERIES",
        "l.i.n.g.e.r.i.e",
        "l i n g e r i e",
        "1ingerie",
        "Lingerie > Sets",
        "sex-toys",
        "sex_toys",
        "SexToys",
        "s3x t0ys",
        "$ex toys",
        "Sports bras",
        "pregnancies",
        "Pregnancy-tests",
        "ＰＲＥＧＮＡＮＣＹ",
    ):
        assert m.tier(yes) == Sensitivity.SENSITIVE, yes
    # not a word of the term: another word that contains it, a space inside a word, "bra" -> "bran"
    for no in ("Bran flakes", "Brass lamps", "Cobra figure", "lin gerie", "sex tools", "Essex toys", ""):
        assert m.tier(no) == Sensitivity.NONE, no
    assert m.tier(None) == Sensitivity.NONE


def test_inflections_follow_the_terms_language() -> None:
    m = _matcher(sensitive={"fr": ["médical", "soutien-gorge"], "de": ["Kondom", "Hobby"], "es": ["condón"]})
    for yes in ("Produits médicaux", "Soins médicales", "Soutiens-gorge", "Kondome", "Hobbys", "Condones"):
        assert m.tier(yes) == Sensitivity.SENSITIVE, yes
    # English endings are not applied to a German term, nor German ones to a French term
    assert m.tier("Hobbies") == Sensitivity.NONE
    assert m.tier("Médicalen") == Sensitivity.NONE


def test_compounds_long_words_and_markers() -> None:
    m = _matcher(
        sensitive={"de": ["Schwangerschaft", "Sex", "*wäsche"], "en": ["=adult", "adult toys"]},
        life={"de": ["Baby*"]},
    )
    assert m.tier("Schwangerschaftstest") == Sensitivity.SENSITIVE  # 8+ letters: inside a compound
    assert m.tier("Frühschwangerschaftstest") == Sensitivity.SENSITIVE
    assert m.tier("Sussex") == Sensitivity.NONE  # short term: whole words only
    assert m.tier("Sextant") == Sensitivity.NONE
    assert m.tier("Babynahrung") == Sensitivity.LIFE_EVENT  # "baby*": first part of a word
    assert m.tier("Bettwäsche") == Sensitivity.SENSITIVE  # "*wäsche": last part of a word
    assert m.tier("Wäscheklammern") == Sensitivity.NONE
    for yes in ("Adult", "adults", "Toys > Adult", "Adult > Toys", "Adult toys"):
        assert m.tier(yes) == Sensitivity.SENSITIVE, yes
    for no in ("Adult bicycle helmets", "Adult colouring book"):
        assert m.tier(no) == Sensitivity.NONE, no


def test_safe_phrases_only_shield_their_own_words() -> None:
    m = _matcher(
        sensitive={"en": ["medicine", "condom"]},
        life={"en": ["baby*"]},
        safe={"en": ["medicine cabinet", "baby spinach"]},
    )
    assert m.tier("Medicine cabinets") == Sensitivity.NONE
    assert m.tier("Baby spinach") == Sensitivity.NONE
    assert m.tier("Medicine") == Sensitivity.SENSITIVE
    assert m.tier("Medicine cabinet condoms") == Sensitivity.SENSITIVE
    assert m.tier("Baby spinach and baby food") == Sensitivity.LIFE_EVENT


def test_highest_tier_wins_and_policy_api() -> None:
    assert POLICY.sensitivity("Baby clothes") == Sensitivity.LIFE_EVENT
    assert not POLICY.is_sensitive("Baby clothes")  # is_sensitive keeps meaning the top tier
    assert POLICY.sensitivity("Baby clothes & maternity wear") == Sensitivity.SENSITIVE
    assert POLICY.is_sensitive("Maternity wear")
    assert POLICY.sensitivity("Running shoes") == Sensitivity.NONE


def test_matcher_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scrubber, "_CACHE_MAX", 5)
    m = _matcher(sensitive={"en": ["lingerie"]})
    for i in range(50):
        m.tier(f"name {i}")
        assert len(m._cache) <= 5
    assert m.tier("Lingerie") == Sensitivity.SENSITIVE


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"xx": ["lingerie"]}, "unknown language 'xx'"),
        ({"en": ["ling*erie"]}, r"sensitive.categories.en\[0\]"),
        ({"en": ["ok", "=adult*"]}, r"sensitive.categories.en\[1\].*cannot be combined"),
        ({"en": ["  "]}, r"sensitive.categories.en\[0\] must be a non-empty string"),
        ({"en": [3]}, r"sensitive.categories.en\[0\] must be a non-empty string"),
        ({"en": ["123"]}, "at least one letter"),
        ("lingerie", "not a string"),
    ],
)
def test_bad_terms_name_the_entry(spec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SensitiveMatcher(spec)


def test_policy_validation_names_the_sensitive_key() -> None:
    raw = yaml.safe_load(g.DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    bad = copy.deepcopy(raw)
    bad["sensitive"]["life_event"]["fr"][0] = "*"
    with pytest.raises(PolicyError, match=r"sensitive.life_event.fr\[0\]"):
        policy_from_dict(bad)
    missing = copy.deepcopy(raw)
    del missing["sensitive"]["safe_phrases"]
    with pytest.raises(PolicyError, match="safe_phrases"):
        policy_from_dict(missing)
    again = policy_from_dict(copy.deepcopy(raw))
    assert again.sensitive_matcher == POLICY.sensitive_matcher


def test_the_policy_lists_every_catalog_language() -> None:
    terms = POLICY.sensitive_matcher.terms()
    for key in ("categories", "life_event", "safe_phrases"):
        assert {"en", "fr", "de", "es"} <= set(terms[key]), key


# --------------------------------------------------------------------------------------------- scrubber
@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Seen at 11:45", "time"),
        ("11.45pm jacket", "time"),
        ("Vu à 9h30", "time"),
        ("9 a.m. deals", "time"),
        ("Um 14 Uhr", "time"),
        ("Tonight only", "time or part of the day"),
        ("Bought this evening", "time, count or place phrase"),
        ("Vu ce soir", "time, count or place phrase"),
        ("Heute Abend", "time or part of the day"),
        ("Visto esta noche", "time, count or place phrase"),
        ("Late night snacks", "time, count or place phrase"),
        ("Monday Night Jacket", "weekday or month"),
        ("Tue. picks", "weekday or month"),
        ("Mo. Angebote", "weekday or size in context"),
        ("Offres du lundi", "weekday or month"),
        ("Sept favourites", "weekday or month"),
        ("janv. soldes", "weekday or month"),
        ("Ofertas de diciembre", "weekday or month"),
        ("Sun. brunch", "weekday or size in context"),
        ("2025-01-06 Tee", "date"),
        ("Seen 1/6", "date"),
        ("06.01.2025", "date"),
        ("6 Jan", "date"),
        ("Le 3 mars", "date"),
        ("3. März", "weekday or month"),
        ("3 de marzo", "weekday or month"),
        ("7 minutes on it", "duration"),
        ("3 Std. gesucht", "duration"),
        ("420s timer", "duration"),
        ("Pack x3", "count"),
        ("3x jacket", "count"),
        ("3 times", "count"),
        ("three times", "count"),
        ("Viewed twice", "count"),
        ("Vu à nouveau", "time, count or place phrase"),
        ("Otra vez", "time, count or place phrase"),
        ("Dreimal angesehen", "count"),
        ("Jacket XL", "size"),
        ("Size 10 Runner", "size"),
        ("Bra 32B", "size"),
        ("Bra 34DD", "size"),
        ("Jeans W32 L34", "size"),
        ("Boots EU 42", "size"),
        ("Boots UK 9", "size"),
        ("Boots US 10.5", "size"),
        ("Robe taille 38", "size"),
        ("Hose Größe 40", "size"),
        ("Vestido talla 40", "size"),
        ("Cloud Tee (M)", "size"),
        ("Cloud Tee S/M", "size"),
        ("Cloud Tee - M", "size"),
        ("221B Baker Street", "address"),
        ("12 rue de Rivoli", "address"),
        ("Hauptstraße 5", "address"),
        ("Calle Mayor 3", "address"),
        ("SW1A 1AA", "postcode"),
        ("NY 10001", "postcode"),
        ("75001 Paris", "postcode"),
        ("94105-1234", "postcode"),
        ("Store Exclusive Tote", "place"),
        ("Pickup in store #123", "store code"),
        ("STR-0042", "store code"),
        ("Shop 12 only", "store code"),
        ("Filiale 12", "store code"),
        ("Tienda cerca de ti", "place"),
        ("Call +44 20 7946 0958", "phone"),
        ("(555) 123-4567", "phone"),
        ("jane.doe@example.com", "email, handle or url"),
        ("www.example.com", "email, handle or url"),
        ("https://shop.example/x", "email, handle or url"),
        ("@janedoe", "email, handle or url"),
        ("ＭＯＮＤＡＹ deals", "weekday or month"),
        ("Mоnday deals", "weekday or month"),  # Cyrillic о
    ],
)
def test_scrubber_catches(text: str, kind: str) -> None:
    problems = scrub_problems(text)
    assert kind in problems, (text, problems)


@pytest.mark.parametrize(
    "text",
    [
        "Sports > Running shoes",
        "Kids’ jackets",
        "T-shirts & tops",
        "Men's 2-in-1 jackets",
        "King size duvet",
        "3/4 sleeve tops",
        "7/8 leggings",
        "1990s vintage dress",
        "Sun hats",
        "Mars bars",
        "Black Friday deals",
        "Midnight blue velvet dress",
        "Weekend bag",
        "Evening dresses",
        "Night cream",
        "Alarm clock radios",
        "Wall clocks",
        "4x4 toy truck",
        "10x42 binoculars",
        "55 inch 4K TV",
        "1000 piece jigsaw puzzle",
        "Große Tasche",
        "Taille unique",
        "Jean taille haute",
        "Tiendas de campaña",
        "Second-hand books",
        "Because you like running shoes",
        "Time to restock your coffee?",
    ],
)
def test_scrubber_lets_ordinary_names_pass(text: str) -> None:
    assert scrub_problems(text) == []


def test_own_values_are_refused_as_a_phrase_or_as_all_their_words() -> None:
    own = ("blue", "Main Street branch", "st_soho", "10")
    assert scrub_problems("Blue Ridge jacket", own)
    assert scrub_problems("Soho tote by main street branch", own)
    assert scrub_problems("Runner 10", own)
    assert scrub_problems("Ridge jacket", own) == []
    assert scrub_problems("BLUE", ("ｂｌｕｅ",))  # same normalisation on both sides


def test_every_template_is_clean() -> None:
    t = POLICY.templates
    texts = [t.reason_none, *t.reason_category.values(), *t.reason_item.values(), *t.profile.values()]
    texts += [x for by_level in t.actions.values() for x in by_level.values()]
    texts += list(getattr(t, "reason_basis", {}).values())
    for text in texts:
        filled = text.format(category="running shoes", item="Trail Runner jacket")
        assert scrub_problems(filled) == [], filled
        assert POLICY.sensitivity(filled) == Sensitivity.NONE, filled


def test_scrubber_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scrubber, "_CACHE_MAX", 5)
    monkeypatch.setattr(scrubber, "_SCRUB_CACHE", {})
    for i in range(20):
        scrub_problems(f"name {'x' * i}")
        assert len(scrubber._SCRUB_CACHE) <= 5
    assert scrub_problems("Monday") == ["weekday or month"]


# --------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "name",
    [
        "Sports > Running shoes",
        "Kids’ jackets",
        "T-shirts & tops",
        "Men's 2-in-1 jackets",
        "Café crème",
        "Größe Tasche",
        "Sujetadores deportivos",
        "Детские куртки",
        "運動鞋",
        "Jackets (waterproof)",
        "Rock–climbing — gear",
        "Tops/T-shirts",
        "100% cotton tee",
        "Nike®",
        "Crème brûlée",
    ],
)
def test_safe_name_accepts_names(name: str) -> None:
    assert safe_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        " leading space",
        "trailing space ",
        "sku_trail",
        "<b>{Trail}</b>",
        "Tee\u200bshirt",
        "Tee\u202eshirt",
        "line\nbreak",
        "tab\tname",
        "jane@example.com",
        "www.example.com",
        "https://shop.example",
        "shop.example.com",
        "x" * 121,
        "# hash",
        "emoji 😀",
        None,
        42,
    ],
)
def test_safe_name_refuses_what_is_not_a_name(name) -> None:
    assert safe_name(name) is None


@pytest.mark.parametrize(
    ("path", "language", "said"),
    [
        ("Sports > Running shoes", "en", "running shoes"),
        ("Running shoes", "en", "running shoes"),
        ("Kids’ jackets", "en", "kids’ jackets"),
        ("Home > TV stands", "en", "TV stands"),
        ("Electronics > iPhone cases", "en", "iPhone cases"),
        ("Home > Running Shoes", "en", "Running Shoes"),
        ("Brands > Nike", "en", "Nike"),
        ("Jackets", "en", "jackets"),
        ("Sport > Laufschuhe", "de", "Laufschuhe"),
        ("Deportes > Zapatillas de running", "es", "zapatillas de running"),
        ("Electronics > 4K TVs", "en", "4K TVs"),
        ("Sports >  > Tents ", "en", "tents"),
        ("", "en", ""),
    ],
)
def test_display_category(path: str, language: str, said: str) -> None:
    assert display_category(path, language) == said


# --------------------------------------------------------------------------------------------- corpora
def test_ordinary_names_pass_unchanged() -> None:
    names = _lines("ordinary_names.txt")
    assert len(names) >= 1000
    failures = []
    for name in names:
        problems = scrub_problems(name)
        tier = POLICY.sensitivity(name)
        if problems or tier != Sensitivity.NONE or safe_name(name) != name:
            failures.append(
                f"{name!r}: problems={problems} tier={tier.name} safe_name={safe_name(name) is not None}"
            )
    rate = 1 - len(failures) / len(names)
    assert rate >= 0.99, f"{rate:.2%} pass; failures:\n" + "\n".join(failures)


def test_sensitive_names_are_all_caught_with_their_tier() -> None:
    rows = [line.split("\t") for line in _lines("sensitive_names.txt")]
    assert len(rows) >= 150 and {r[0] for r in rows} == {"sensitive", "life_event"}
    wrong = [
        f"{name!r}: expected {tier}, got {POLICY.sensitivity(name).name.lower()}"
        for tier, name in rows
        if POLICY.sensitivity(name) != Sensitivity[tier.upper()]
    ]
    assert not wrong, "\n".join(wrong)
