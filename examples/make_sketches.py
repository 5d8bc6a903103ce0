"""Draw the rough colour-blob sketches used by the README's translation and out-of-domain
editing figures (deterministic; not OpenMoji renders): `python examples/make_sketches.py`
writes examples/sketches/*.png at 32×32 (drawn at 128×128, then downsampled)."""

import math
from pathlib import Path

from PIL import Image, ImageDraw

LIGHT_SKIN = (250, 220, 188)  # OpenMoji's light skin tone fill
OUTLINE = (30, 30, 30)


def canvas():
    img = Image.new("RGB", (128, 128), "white")
    return img, ImageDraw.Draw(img)


def smiley():
    img, d = canvas()
    d.ellipse((14, 14, 114, 114), fill=(252, 234, 43))
    d.ellipse((42, 44, 54, 60), fill=OUTLINE)
    d.ellipse((74, 44, 86, 60), fill=OUTLINE)
    d.arc((38, 50, 90, 96), 20, 160, fill=OUTLINE, width=6)
    return img


def heart():
    img, d = canvas()
    d.ellipse((18, 24, 68, 74), fill=(210, 34, 45))
    d.ellipse((60, 24, 110, 74), fill=(210, 34, 45))
    d.polygon([(20, 58), (108, 58), (64, 110)], fill=(210, 34, 45))
    return img


def face():
    img, d = canvas()
    d.rectangle((34, 96, 94, 124), fill=(146, 211, 245))  # shoulders
    d.ellipse((30, 18, 98, 96), fill=LIGHT_SKIN)
    d.chord((28, 10, 100, 70), 180, 360, fill=(160, 100, 50))  # hair
    d.ellipse((48, 52, 56, 62), fill=OUTLINE)
    d.ellipse((72, 52, 80, 62), fill=OUTLINE)
    d.line((54, 78, 74, 78), fill=OUTLINE, width=4)
    return img


def raised_hand():
    img, d = canvas()
    d.rounded_rectangle((38, 56, 94, 118), 14, fill=LIGHT_SKIN)
    for x in (40, 54, 68, 82):
        d.rounded_rectangle((x, 14 + abs(x - 61) // 2, x + 11, 70), 5, fill=LIGHT_SKIN)
    d.rounded_rectangle((88, 60, 112, 74), 6, fill=LIGHT_SKIN)  # thumb
    return img


def sun():
    img, d = canvas()
    for i in range(8):
        a = i * math.pi / 4
        d.line((64 + 30 * math.cos(a), 64 + 30 * math.sin(a),
                64 + 56 * math.cos(a), 64 + 56 * math.sin(a)), fill=(241, 142, 28), width=8)
    d.ellipse((34, 34, 94, 94), fill=(252, 234, 43))
    return img


def tree():
    img, d = canvas()
    d.rectangle((56, 76, 72, 118), fill=(140, 90, 50))
    d.ellipse((24, 14, 104, 88), fill=(92, 178, 64))
    return img


SKETCHES = {"smiley": smiley, "heart": heart, "face": face, "raised_hand": raised_hand,
            "sun": sun, "tree": tree}

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "sketches"
    out.mkdir(exist_ok=True)
    for name, draw in SKETCHES.items():
        draw().resize((32, 32), Image.LANCZOS).save(out / f"{name}.png")
    print(f"wrote {len(SKETCHES)} sketches to {out}")
