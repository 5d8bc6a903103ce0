"""What an edit's texts name in the data, and which images carry it.

An edit is trained on, and measured on, the images whose attributes its source text names
("light skin tone" → the glyphs with a light skin tone); where the data holds the true edited
image (OpenMoji skin-tone and man ↔ woman variants, :func:`~hifiedit.data.openmoji.edit_pairs`),
it is measured against that. Training, evaluation and the CLIP checks read the texts here, so
that the words mean what they mean in the data, the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from hifiedit.errors import HifieditError

# Attribute kinds for which `edit_pairs` knows the true edited image.
GROUND_TRUTH_KINDS = ("skin_tone", "gender")
# OpenMoji names one glyph "neutral" (train split; none in val or test): for a "neutral" source,
# every face glyph whose expression is not a smile counts (24 train, 1 val, 6 test images).
SMILES = frozenset({"smiling", "grinning", "beaming", "laughing", "joy", "smirking", "winking",
                    "kissing"})


def source_attribute(text: str) -> tuple[str, str]:
    """(record field, value) that a text names: a skin tone ("light skin tone" → skin_tone
    light), a gender ("man"), or a facial expression ("neutral"); parsed like an emoji name,
    so the words mean what they mean in the data."""
    from hifiedit.data.openmoji import parse_name

    attrs = parse_name("_".join(text.lower().split()))
    if attrs["skin_tone"] not in (None, "mixed"):
        return "skin_tone", attrs["skin_tone"]
    if attrs["gender"] not in (None, "mixed"):
        return "gender", attrs["gender"]
    if attrs["expression"]:
        return "expression", attrs["expression"][0]
    raise HifieditError(f"cannot choose default training images for the source text {text!r}: "
                        "it names no skin tone, man/woman/person or facial expression; pass "
                        "--image-dir DIR.")


def has_attribute(record, field: str, value: str) -> bool:
    """Whether an `EmojiRecord` carries ``field = value`` ("neutral": a face without a smile)."""
    if field == "expression" and value == "neutral":
        return ("face" in record.name.split() and bool(record.expression)
                and not SMILES & set(record.expression))
    return value in record.expression if field == "expression" else getattr(record, field) == value


@dataclass(frozen=True)
class EditAttributes:
    """What an edit's texts name in the data: the source attribute (field, value), the target
    value when the target text names the same field, and the pair kind with a true answer."""

    src: str
    tgt: str
    field: str
    source: str
    target: str | None
    ground_truth: str | None  # "skin_tone" | "gender" | None


def edit_attributes(src: str, tgt: str) -> EditAttributes:
    """Map the edit's texts to the attributes of `EditPair`: "light skin tone" → skin_tone
    light, "dark skin tone" → dark, "man"/"woman" → gender."""
    field, source = source_attribute(src)
    try:
        tgt_field, target = source_attribute(tgt)
    except HifieditError:
        tgt_field, target = None, None
    if tgt_field != field or target == source:
        target = None
    truth = field if target is not None and field in GROUND_TRUTH_KINDS else None
    if field == "gender" and not {source, target} <= {"man", "woman"}:
        truth = None  # edit_pairs only pairs man ↔ woman
    return EditAttributes(src, tgt, field, source, target, truth)


def select_images(data, split: str, attrs: EditAttributes,
                  limit: int | None = None) -> list[tuple[int, int | None]]:
    """(source index, true-target index or None) for the images an edit is measured on."""
    from hifiedit.data.openmoji import edit_pairs

    records = [data.records[i] for i in data.indices(split)]
    if attrs.ground_truth:
        chosen = sorted((p.source, p.target) for p in edit_pairs(records)
                        if p.kind == attrs.ground_truth and p.source_attr == attrs.source
                        and p.target_attr == attrs.target)
    else:
        chosen = [(r.index, None) for r in records if has_attribute(r, attrs.field, attrs.source)]
    if not chosen:
        what = (f"{attrs.ground_truth} pair {attrs.source} → {attrs.target}" if attrs.ground_truth
                else f"image with {attrs.field} = {attrs.source!r}")
        raise HifieditError(f"no {split}-split {what} to evaluate {attrs.src!r} → {attrs.tgt!r} on.")
    return chosen[:limit] if limit else chosen
