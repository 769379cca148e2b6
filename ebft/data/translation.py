"""Parallel sentences for translation (the offline stand-in for ALMA / WMT22).

Synthetic pairs come from sentence templates written in English, German and French, filled with the same
content in each language: numbers, ordinals and years spelled out by ``num2words``, nouns with their
plural forms, and names (with the French participle agreeing with the person). Every template instance
gives one sentence per language, and every requested pair gives both directions (``en-de`` gives en->de
and de->en). A hash of the English sentence decides the split of an instance, and no sentence occurs in two
instances, so the splits are disjoint by source sentence in every direction.

With ``real_test=True`` the test split also holds real sentence pairs from the gettext catalogs that ship
inside the Django wheel (``origin="django"``; the synthetic ones have ``origin="synthetic"``).

Prompt format (the same for every origin; see :func:`format_prompt` and :func:`format_answer`)::

    question = "Translate from English to German.\\nEnglish: {source}\\nGerman:"
    answer   = " {reference}\\n"

The answer starts with a space (it continues the line after ``German:``) and ends with a newline, which
marks the end of the translation; ``reference`` holds the bare target sentence.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from num2words import num2words

from ebft.data.records import SPLITS, check_sizes

LANGS: tuple[str, ...] = ("en", "de", "fr")
LANG_NAMES: dict[str, str] = {
    "en": "English", "de": "German", "fr": "French", "cs": "Czech", "is": "Icelandic", "ru": "Russian",
    "zh": "Chinese", "ja": "Japanese", "es": "Spanish", "it": "Italian", "uk": "Ukrainian", "hr": "Croatian",
}  # fmt: skip
"""English names of languages, used in prompts (any other ISO code is used as it is)."""

DEFAULT_PAIRS: tuple[str, ...] = ("en-de", "en-fr")
_MAX_FRUITLESS_DRAWS = 20_000


def language_name(code: str) -> str:
    """The English name of a language code used in prompts (the code itself when unknown)."""
    return LANG_NAMES.get(code, code)


def format_prompt(src_lang: str, tgt_lang: str, source: str) -> str:
    """The translation prompt: ``"Translate from X to Y.\\nX: {source}\\nY:"``."""
    src, tgt = language_name(src_lang), language_name(tgt_lang)
    return f"Translate from {src} to {tgt}.\n{src}: {source}\n{tgt}:"


def format_answer(reference: str) -> str:
    """The completion for a reference translation: a leading space and a closing newline."""
    return f" {reference}\n"


def parse_answer(completion: str) -> str:
    """The translation in a generated completion: the text up to the first newline, stripped."""
    return completion.split("\n", 1)[0].strip()


def make_record(
    rec_id: str, src_lang: str, tgt_lang: str, source: str, reference: str, origin: str
) -> dict[str, Any]:
    """A translation record in the shared schema."""
    return {
        "id": rec_id,
        "question": format_prompt(src_lang, tgt_lang, source),
        "answer": format_answer(reference),
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "source": source,
        "reference": reference,
        "origin": origin,
    }


# ----------------------------------------------------------------------------------------------
# Lexicon.

NOUNS: tuple[tuple[str, str, str], ...] = (
    ("apples", "Äpfel", "pommes"),
    ("books", "Bücher", "livres"),
    ("eggs", "Eier", "œufs"),
    ("bottles", "Flaschen", "bouteilles"),
    ("pencils", "Bleistifte", "crayons"),
    ("cups", "Tassen", "tasses"),
    ("keys", "Schlüssel", "clés"),
    ("flowers", "Blumen", "fleurs"),
    ("bananas", "Bananen", "bananes"),
    ("tomatoes", "Tomaten", "tomates"),
    ("candles", "Kerzen", "bougies"),
    ("plates", "Teller", "assiettes"),
    ("glasses", "Gläser", "verres"),
    ("letters", "Briefe", "lettres"),
    ("shoes", "Schuhe", "chaussures"),
    ("oranges", "Orangen", "oranges"),
    ("potatoes", "Kartoffeln", "pommes de terre"),
    ("stones", "Steine", "pierres"),
    ("coins", "Münzen", "pièces"),
    ("balls", "Bälle", "balles"),
    ("boxes", "Schachteln", "boîtes"),
    ("cards", "Karten", "cartes"),
    ("spoons", "Löffel", "cuillères"),
    ("lemons", "Zitronen", "citrons"),
    ("onions", "Zwiebeln", "oignons"),
    ("shirts", "Hemden", "chemises"),
    ("chairs", "Stühle", "chaises"),
    ("photos", "Fotos", "photos"),
)
"""Countable nouns in the plural: (English, German, French)."""

PEOPLE: tuple[tuple[str, str], ...] = (
    ("Anna", "f"),
    ("Paul", "m"),
    ("Marie", "f"),
    ("Thomas", "m"),
    ("Julia", "f"),
    ("Lukas", "m"),
    ("Sophie", "f"),
    ("Felix", "m"),
    ("Clara", "f"),
    ("David", "m"),
    ("Emma", "f"),
    ("Leon", "m"),
)
"""First names with grammatical gender (for French participle agreement)."""

CITIES: tuple[str, ...] = ("Berlin", "Paris", "London", "Rome", "Vienna", "Madrid", "Oslo", "Prague")
CITY_NAMES: dict[str, tuple[str, str, str]] = {
    "Berlin": ("Berlin", "Berlin", "Berlin"), "Paris": ("Paris", "Paris", "Paris"),
    "London": ("London", "London", "Londres"), "Rome": ("Rome", "Rom", "Rome"),
    "Vienna": ("Vienna", "Wien", "Vienne"), "Madrid": ("Madrid", "Madrid", "Madrid"),
    "Oslo": ("Oslo", "Oslo", "Oslo"), "Prague": ("Prague", "Prag", "Prague"),
}  # fmt: skip


def _french_de(noun: str) -> str:
    """French ``de`` before a noun, elided before a vowel sound: ``de pommes``, ``d'œufs``."""
    return f"d'{noun}" if noun[0] in "aeiouyéèêàâîôûœ" else f"de {noun}"


@cache
def _spell(value: int, lang: str, to: str = "cardinal") -> str:
    """``num2words`` with a cache."""
    return num2words(value, lang=lang, to=to)


# ----------------------------------------------------------------------------------------------
# Templates.

Slots = dict[str, tuple[str, str, str]]
"""Slot values per language, in the order of :data:`LANGS`."""


@dataclass(frozen=True)
class Template:
    """A sentence in the three languages with ``{slot}`` placeholders, and how to fill the slots."""

    en: str
    de: str
    fr: str
    number: str = "count"  # the kind of {n}: count, age, minutes, hours, degrees, year, ordinal, none


def _draw_number(rng: random.Random, kind: str) -> int:
    """A number of the given kind; cardinals avoid a final 1 (which would need agreement: "vingt et une")."""
    ranges = {
        "count": None,
        "age": (2, 99),
        "minutes": (2, 59),
        "hours": (2, 24),
        "degrees": (2, 40),
        "days": (2, 30),
        "year": (1800, 2030),
        "ordinal": (2, 40),
        "none": (0, 0),
    }
    if kind == "count":
        r = rng.random()
        lo, hi = (2, 12) if r < 0.5 else (13, 99) if r < 0.85 else (100, 999)
    else:
        lo, hi = ranges[kind]
    while True:
        value = rng.randint(lo, hi)
        if kind in ("year", "ordinal", "none") or value % 10 != 1:
            return value


def _number_slot(value: int, kind: str) -> tuple[str, str, str]:
    """The number spelled in each language (years as years, ordinals as ordinals)."""
    if kind == "none":
        return ("", "", "")
    to = {"year": "year", "ordinal": "ordinal"}.get(kind, "cardinal")
    return tuple(_spell(value, lang, to) for lang in LANGS)  # type: ignore[return-value]


TEMPLATES: tuple[Template, ...] = (
    Template("{name} has {n} {noun}.", "{name} hat {n} {noun}.", "{name} a {n} {noun}."),
    Template("I have {n} {noun}.", "Ich habe {n} {noun}.", "J'ai {n} {noun}."),
    Template(
        "We bought {n} {noun} yesterday.",
        "Wir haben gestern {n} {noun} gekauft.",
        "Nous avons acheté {n} {noun} hier.",
    ),
    Template(
        "There are {n} {noun} in the box.",
        "In der Kiste sind {n} {noun}.",
        "Il y a {n} {noun} dans la boîte.",
    ),
    Template(
        "How many {noun} do you have? I have {n}.",
        "Wie viele {noun} hast du? Ich habe {n}.",
        "Combien {de_noun} as-tu ? J'en ai {n}.",
    ),
    Template(
        "{name} sold {n} {noun} at the market.",
        "{name} hat auf dem Markt {n} {noun} verkauft.",
        "{name} a vendu {n} {noun} au marché.",
    ),
    Template(
        "The shop still has {n} {noun}.", "Der Laden hat noch {n} {noun}.", "Le magasin a encore {n} {noun}."
    ),
    Template("We need {n} {noun}.", "Wir brauchen {n} {noun}.", "Nous avons besoin de {n} {noun}."),
    Template(
        "{name} found {n} {noun} in the garden.",
        "{name} hat {n} {noun} im Garten gefunden.",
        "{name} a trouvé {n} {noun} dans le jardin.",
    ),
    Template(
        "Please give me {n} {noun}.", "Gib mir bitte {n} {noun}.", "Donne-moi {n} {noun}, s'il te plaît."
    ),
    Template(
        "My sister is {n} years old.", "Meine Schwester ist {n} Jahre alt.", "Ma sœur a {n} ans.", "age"
    ),
    Template("{name} is {n} years old.", "{name} ist {n} Jahre alt.", "{name} a {n} ans.", "age"),
    Template(
        "The train leaves in {n} minutes.",
        "Der Zug fährt in {n} Minuten ab.",
        "Le train part dans {n} minutes.",
        "minutes",
    ),
    Template(
        "The concert lasted {n} minutes.",
        "Das Konzert dauerte {n} Minuten.",
        "Le concert a duré {n} minutes.",
        "minutes",
    ),
    Template(
        "I waited for {n} hours.", "Ich habe {n} Stunden gewartet.", "J'ai attendu {n} heures.", "hours"
    ),
    Template(
        "It is {n} degrees outside.", "Draußen sind es {n} Grad.", "Il fait {n} degrés dehors.", "degrees"
    ),
    Template(
        "I will be back in {n} days.",
        "Ich bin in {n} Tagen zurück.",
        "Je serai de retour dans {n} jours.",
        "days",
    ),
    Template("The book has {n} pages.", "Das Buch hat {n} Seiten.", "Le livre a {n} pages."),
    Template(
        "The village has {n} inhabitants.", "Das Dorf hat {n} Einwohner.", "Le village compte {n} habitants."
    ),
    Template(
        "The room costs {n} euros per night.",
        "Das Zimmer kostet {n} Euro pro Nacht.",
        "La chambre coûte {n} euros par nuit.",
    ),
    Template(
        "The children read {n} books this summer.",
        "Die Kinder haben diesen Sommer {n} Bücher gelesen.",
        "Les enfants ont lu {n} livres cet été.",
    ),
    Template(
        "We walked {n} kilometres today.",
        "Wir sind heute {n} Kilometer gelaufen.",
        "Nous avons marché {n} kilomètres aujourd'hui.",
    ),
    Template("The class has {n} students.", "Die Klasse hat {n} Schüler.", "La classe compte {n} élèves."),
    Template("{name} was born in {n}.", "{name} wurde {n} geboren.", "{name} est {born} en {n}.", "year"),
    Template(
        "The bridge was built in {n}.",
        "Die Brücke wurde {n} gebaut.",
        "Le pont a été construit en {n}.",
        "year",
    ),
    Template(
        "The museum opened in {n}.", "Das Museum wurde {n} eröffnet.", "Le musée a ouvert en {n}.", "year"
    ),
    Template(
        "In {n}, {name} moved to {city}.",
        "{n} zog {name} nach {city}.",
        "En {n}, {name} a déménagé à {city}.",
        "year",
    ),
    Template("This is the {n} time.", "Das ist das {n} Mal.", "C'est la {n} fois.", "ordinal"),
    Template(
        "{name} lives on the {n} floor.",
        "{name} wohnt im {n}n Stock.",
        "{name} habite au {n} étage.",
        "ordinal",
    ),
    Template(
        "Our team finished in {n} place.",
        "Unsere Mannschaft belegte den {n}n Platz.",
        "Notre équipe a terminé à la {n} place.",
        "ordinal",
    ),
    Template(
        "The {n} chapter is the longest.",
        "Das {n} Kapitel ist das längste.",
        "Le {n} chapitre est le plus long.",
        "ordinal",
    ),
    Template("{name} lives in {city}.", "{name} wohnt in {city}.", "{name} habite à {city}.", "none"),
    Template(
        "{name} is travelling to {city} with {n} friends.",
        "{name} reist mit {n} Freunden nach {city}.",
        "{name} part pour {city} avec {n} amis.",
    ),
)
"""Sentence templates (English, German, French)."""


def _capitalize(sentence: str) -> str:
    """Upper-case the first character (a sentence may start with a spelled-out number)."""
    return sentence[:1].upper() + sentence[1:]


def instantiate(template: Template, rng: random.Random) -> tuple[str, str, str]:
    """Fill a template with random slot values; returns the sentence in each of :data:`LANGS`."""
    noun = rng.choice(NOUNS)
    name, gender = rng.choice(PEOPLE)
    city = CITY_NAMES[rng.choice(CITIES)]
    number = _number_slot(_draw_number(rng, template.number), template.number)
    slots: Slots = {
        "n": number,
        "noun": noun,
        "de_noun": ("", "", _french_de(noun[2])),
        "name": (name, name, name),
        "born": ("", "", "née" if gender == "f" else "né"),
        "city": city,
    }
    texts = (template.en, template.de, template.fr)
    return tuple(  # type: ignore[return-value]
        _capitalize(text.format(**{key: values[i] for key, values in slots.items()}))
        for i, text in enumerate(texts)
    )


# ----------------------------------------------------------------------------------------------
# Django gettext catalogs.


@dataclass(frozen=True)
class PoEntry:
    """One translated message of a ``.po`` file."""

    msgid: str
    msgstr: str
    fuzzy: bool
    plural: bool
    context: str | None


def _unquote(token: str) -> str:
    """The value of a C-style quoted PO string."""
    token = token.strip()
    if not (len(token) >= 2 and token[0] == '"' and token[-1] == '"'):
        raise ValueError(f"not a quoted PO string: {token!r}")
    return ast.literal_eval(token)


def parse_po(text: str) -> list[PoEntry]:
    """Parse a gettext ``.po`` catalog into entries (the header entry and obsolete ``#~`` ones excluded)."""
    entries: list[PoEntry] = []
    fields: dict[str, str] = {}
    flags = ""
    current: str | None = None

    def flush() -> None:
        nonlocal fields, flags, current
        if "msgid" in fields and fields["msgid"]:
            msgstr = fields.get("msgstr", fields.get("msgstr[0]", ""))
            entries.append(
                PoEntry(
                    fields["msgid"], msgstr, "fuzzy" in flags, "msgid_plural" in fields, fields.get("msgctxt")
                )
            )
        fields, flags, current = {}, "", None

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            flush()
        elif line.startswith("#,"):
            flags += line[2:]
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            if current is not None:
                fields[current] += _unquote(line)
        else:
            keyword, _, rest = line.partition(" ")
            if keyword in ("msgctxt", "msgid") and "msgstr" in fields or keyword in fields:
                flush()
            current = keyword
            fields[current] = _unquote(rest)
    flush()
    return entries


_PLACEHOLDER_CHARS = frozenset("%{}<>\n\t\\|[]")


def is_sentence_like(text: str, min_words: int = 4) -> bool:
    """True for plain text of at least ``min_words`` words without placeholders or markup."""
    return (
        len(text.split()) >= min_words
        and not _PLACEHOLDER_CHARS.intersection(text)
        and text == text.strip()
        and "http" not in text
    )


def django_locale_files(lang: str) -> list[Path]:
    """The ``django.po`` and ``djangojs.po`` catalogs of ``lang`` inside the installed Django package."""
    spec = importlib.util.find_spec("django")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the real test set needs Django (its gettext catalogs); pip install django")
    root = Path(spec.origin).parent
    return sorted(root.glob(f"**/locale/{lang}/LC_MESSAGES/*.po"))


def django_pairs(lang: str) -> dict[str, str]:
    """Sentence-like English -> ``lang`` pairs from Django's catalogs, keyed by the English text.

    Fuzzy, plural, empty and placeholder entries are skipped; the first translation of a message (in sorted
    file order) wins, and a target sentence that translates two different messages is dropped from both.
    """
    pairs: dict[str, str] = {}
    for path in django_locale_files(lang):
        for entry in parse_po(path.read_text(encoding="utf-8")):
            if entry.fuzzy or entry.plural or not entry.msgstr:
                continue
            if (
                is_sentence_like(entry.msgid)
                and is_sentence_like(entry.msgstr)
                and entry.msgid != entry.msgstr
            ):
                pairs.setdefault(entry.msgid, entry.msgstr)
    targets: dict[str, int] = {}
    for target in pairs.values():
        targets[target] = targets.get(target, 0) + 1
    return {en: tgt for en, tgt in sorted(pairs.items()) if targets[tgt] == 1}


def _real_pairs_for(pair: tuple[str, str]) -> list[tuple[str, str]]:
    """Real (first language, second language) sentences for a pair; English-pivot for non-English pairs."""
    a, b = pair
    tables = {lang: django_pairs(lang) for lang in (a, b) if lang != "en"}
    out = []
    for en in sorted(set.intersection(*(set(t) for t in tables.values()))):
        texts = {"en": en, **{lang: table[en] for lang, table in tables.items()}}
        out.append((texts[a], texts[b]))
    return out


# ----------------------------------------------------------------------------------------------
# Generation.


def parse_pairs(pairs: Iterable[str]) -> list[tuple[str, str]]:
    """Parse ``["en-de", ...]`` into language tuples, checking the languages are known and distinct."""
    out = []
    for pair in pairs:
        parts = tuple(pair.split("-"))
        if len(parts) != 2 or parts[0] == parts[1] or not set(parts) <= set(LANGS):
            raise ValueError(
                f"bad translation pair {pair!r}: use 'xx-yy' with two different languages of {LANGS}"
            )
        if parts in out:
            raise ValueError(f"translation pair {pair!r} is listed twice")
        out.append(parts)
    if not out:
        raise ValueError("pairs must name at least one translation pair, e.g. ['en-de']")
    return out  # type: ignore[return-value]


def split_of(text: str) -> str:
    """The split of an instance, from a hash of its English sentence: 10 % test, 10 % valid, 80 % train."""
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def _directions(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Both directions of every pair: en-de gives (en, de) and (de, en)."""
    return [d for a, b in pairs for d in ((a, b), (b, a))]


def _synthetic_instances(
    sizes: dict[str, int],
    n_directions: int,
    rng: random.Random,
    draw: Callable[[random.Random], tuple[str, ...]],
) -> dict[str, list[tuple[str, ...]]]:
    """Draw distinct instances until every split has enough for its size (one record per direction)."""
    need = {split: -(-sizes[split] // n_directions) for split in SPLITS}
    out: dict[str, list[tuple[str, ...]]] = {split: [] for split in SPLITS}
    used: set[str] = set()
    fruitless = 0
    while any(len(out[s]) < need[s] for s in SPLITS):
        if fruitless > _MAX_FRUITLESS_DRAWS:
            raise ValueError(f"the templates ran out of distinct sentences for sizes {sizes}")
        fruitless += 1
        texts = draw(rng)
        if used.intersection(texts):
            continue
        used.update(texts)
        split = split_of(texts[0])
        if len(out[split]) < need[split]:
            out[split].append(texts)
            fruitless = 0
    return out


def _records_for(
    instances: list[tuple[str, ...]], directions: list[tuple[str, str]], origin: str, limit: int | None
) -> list[tuple[str, str, str, str, str]]:
    """(src_lang, tgt_lang, source, reference, origin) for every instance and direction, up to ``limit``."""
    rows = []
    for texts in instances:
        by_lang = dict(zip(LANGS, texts, strict=True))
        for src, tgt in directions:
            rows.append((src, tgt, by_lang[src], by_lang[tgt], origin))
    return rows if limit is None else rows[:limit]


def _django_rows(pairs: Sequence[tuple[str, str]], rng: random.Random, max_real: int | None) -> list[tuple]:
    """Real test rows in both directions of each pair (at most ``max_real`` sentence pairs per pair)."""
    rows = []
    for a, b in pairs:
        real = _real_pairs_for((a, b))
        rng.shuffle(real)
        for text_a, text_b in real[:max_real] if max_real is not None else real:
            rows.append((a, b, text_a, text_b, "django"))
            rows.append((b, a, text_b, text_a, "django"))
    return rows


def generate(
    sizes: dict[str, int],
    seed: int,
    *,
    pairs: Iterable[str] = DEFAULT_PAIRS,
    real_test: bool = True,
    max_real: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Generate translation records for the train/valid/test splits.

    Args:
        sizes: number of synthetic records per split (all directions together, in shuffled order).
        seed: random seed; the same seed gives identical output.
        pairs: language pairs such as ``"en-de"``; each gives both directions. Languages: en, de, fr.
        real_test: add Django's real sentence pairs to the test split (beyond ``sizes["test"]``), with
            ``origin="django"``.
        max_real: at most this many real sentence pairs per language pair (None: all of them).

    Raises:
        ValueError: for bad sizes or pairs, or if the templates cannot give that many distinct sentences.
    """
    sizes = check_sizes(sizes)
    parsed = parse_pairs(pairs)
    directions = _directions(parsed)
    rng = random.Random(seed)
    instances = _synthetic_instances(
        sizes, len(directions), rng, lambda r: instantiate(r.choice(TEMPLATES), r)
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        rows = _records_for(instances[split], directions, "synthetic", sizes[split])
        rng.shuffle(rows)
        if split == "test" and real_test:
            rows += _django_rows(parsed, rng, max_real)
        out[split] = [make_record(f"{split}-{i:06d}", *row) for i, row in enumerate(rows)]
    return out
