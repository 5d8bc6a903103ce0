"""Caption variants for OpenMoji glyphs, built from their names and attributes.

Our own CLIP learns text from these captions only, so they must say the two things edits are
about (skin tone, man/woman/person) in more than one way: the CLDR form "thumbs up: dark skin
tone", a prefix form "dark skin tone thumbs up", a sentence form "a thumbs up with dark skin",
and for gendered names "woman cook" / "a cook who is a woman" / "a female cook". The rules are
deliberately few and generic (no per-emoji phrase book): every caption still contains the
glyph's own words, so retrieval by full name keeps working.

The functions here also build the *counterfactual* names that zero-shot evaluation compares
(the same glyph with another tone or gender word), so training captions and evaluation
prompts come from one place.
"""

from __future__ import annotations

import re

from hifiedit.data.openmoji import SKIN_TONES, EmojiRecord

_TONE_PHRASE = re.compile(r"(?:medium-light|medium-dark|medium|light|dark) skin tone")
# Gender words and their singular/plural forms, so that a swap keeps the grammar.
_GENDER_FORMS = {"man": ("man", "men"), "woman": ("woman", "women"), "person": ("person", "people")}
_WORD_GENDER = {w: (g, i) for g, forms in _GENDER_FORMS.items() for i, w in enumerate(forms)}
_ADJECTIVE = {"man": "male", "woman": "female"}
# Words after which "a man who is …" reads as English ("man bowing", "woman in tuxedo").
_PREPOSITIONS = {"in", "with", "on", "wearing", "holding", "and", "of", "at", "from"}
# Glyphs that show a hand or another body part rather than a whole person.
_BODY_PARTS = {"hand", "hands", "thumbs", "fist", "finger", "fingers", "palm", "palms", "biceps",
               "leg", "foot", "ear", "nose", "nail", "handshake", "writing"}


def tone_phrases(record: EmojiRecord) -> list[str]:
    """The skin-tone phrases in the name, in order ("dark skin tone", "light skin tone")."""
    return _TONE_PHRASE.findall(record.name)


def with_tone(tone_base: str, tone: str | None) -> str:
    """The emoji package's own naming: "thumbs up dark skin tone", or the bare base for the
    default (yellow) glyph. Used for names that evaluation compares."""
    return tone_base if tone is None else f"{tone_base} {tone} skin tone"


def with_gender(tone_base: str, gender: str) -> str | None:
    """`tone_base` with every man/woman/person word replaced by `gender` (plural kept), or None
    when the base has no gender word: "kiss woman woman" → "kiss man man"."""
    words = tone_base.split(" ")
    if not any(w in _WORD_GENDER for w in words):
        return None
    return " ".join(_GENDER_FORMS[gender][_WORD_GENDER[w][1]] if w in _WORD_GENDER else w
                    for w in words)


def _gender_variants(base: str) -> list[str]:
    """Extra phrasings of a base that starts with one gender word: "woman cook" →
    "a cook who is a woman", "a female cook"; "man bowing" → "a man who is bowing"."""
    words = base.split(" ")
    if len(words) < 2 or words[0] not in _WORD_GENDER or any(w in _WORD_GENDER for w in words[1:]):
        return []
    gender, plural = _WORD_GENDER[words[0]]
    if plural:
        return []
    rest = " ".join(words[1:])
    article = "an" if rest[0] in "aeiou" else "a"
    if rest == "bald":
        return [f"a bald {words[0]}"]
    if rest.endswith(" hair"):
        return [f"a {words[0]} with {rest}"]
    if words[1].endswith("ing"):
        return [f"a {words[0]} who is {rest}", f"a {words[0]} {rest}"]
    if words[1] in _PREPOSITIONS:
        return [f"a {words[0]} {rest}"]
    out = [f"{article} {rest} who is a {words[0]}"]
    if gender in _ADJECTIVE:
        adjective = _ADJECTIVE[gender]
        out.append(f"a {adjective} {rest}")
    return out


def caption_variants(record: EmojiRecord, has_tones: bool = False) -> list[str]:
    """Every caption of one glyph; the first one is its name.

    `has_tones`: the glyph's base also exists in skin tones, so the default (no tone) glyph
    is the yellow one and may say so.
    """
    phrases = tone_phrases(record)
    base = record.tone_base
    bases = [base] + _gender_variants(base)
    out = [record.name]
    if phrases:
        tone_text = ", ".join(phrases)
        short = ", ".join(p.replace(" tone", "") for p in phrases)  # "dark skin"
        out += [f"{base}: {tone_text}", f"{tone_text} {base}", f"{base} with {short}"]
        out += [f"{b}, {tone_text}" for b in bases[1:]]
        words = set(base.split(" "))
        if words & _BODY_PARTS and not words & set(_WORD_GENDER):
            out.append(f"a hand with {short} showing {base}")
    else:
        out += bases[1:]
        if has_tones:
            out += [f"{base}: default yellow", f"yellow {base}"]
    seen: set[str] = set()
    return [c for c in out if not (c in seen or seen.add(c))]


def toned_bases(records: list[EmojiRecord]) -> set[str]:
    """tone_base of every glyph that exists in at least one skin tone."""
    return {r.tone_base for r in records if r.skin_tone in SKIN_TONES}


def caption_corpus(records: list[EmojiRecord]) -> list[list[str]]:
    """caption_variants of every record, in record order."""
    toned = toned_bases(records)
    return [caption_variants(r, r.tone_base in toned) for r in records]
