"""The one image loader every stage uses.

Any file PIL can read becomes an upright RGB image; every way a file can be unusable
(missing, empty, truncated, not an image, too large) becomes one `ImageError` that names
the file and says what to do.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from emovlm_kd.errors import UserError

# Lower-case suffixes the dataset loader treats as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# 8000 x 8000: larger than any photo in the emotion datasets, yet small enough that the
# decoded RGB image (~190 MB) cannot exhaust memory.
DEFAULT_MAX_PIXELS = 64_000_000

ImageSource = Union[str, "os.PathLike[str]", bytes]

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


# PIL's warnings about large images and corrupt EXIF only repeat what load_image already
# handles (it refuses the first, tolerates the second). Filters rather than
# catch_warnings() because images are loaded from several threads and catch_warnings()
# swaps the process-wide filter list.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)
# The same for its notes on damaged metadata ("Tag data larger than file", ...): the image
# loads as stored, or fails with an ImageError.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


class ImageError(UserError):
    """An image that cannot be used; the message names the file and says what to do."""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a visible file whose extension is one of `IMAGE_EXTENSIONS`.

    Hidden names (`.DS_Store`, macOS `._photo.jpg` resource forks) are never images.
    """
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks; the content key of every cache."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise ImageError(f"cannot read {path} ({error.strerror}); check that it exists and is readable.") from None
    return digest.hexdigest()


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 0,
    max_aspect_ratio: float = 0,
) -> Image.Image:
    """Decode an image file (path or bytes) into an upright RGB image.

    EXIF orientation is applied, animations give their first frame, transparency is
    composited on white, and an image whose shorter side is below `min_side` is upscaled
    (keeping its aspect ratio) so that side is exactly `min_side`. Images above
    `max_pixels`, or longer than `max_aspect_ratio` times their width (0: no limit), are
    refused from their header, before any pixel is decoded.
    Raises `ImageError` for every file that cannot be used.
    """
    name = _describe(source)
    with _open(source, max_pixels, max_aspect_ratio) as opened:
        try:
            # Decodes the first frame only; animated files stay on frame 0.
            opened.load()
        except Exception as error:
            raise _damaged(name, error) from None
        # A corrupt EXIF block must not cost the image: it is then used as stored.
        with contextlib.suppress(Exception):
            ImageOps.exif_transpose(opened, in_place=True)
        try:
            rgb = to_rgb(opened)
        except Exception as error:
            raise ImageError(
                f"{name} uses colour mode {opened.mode}, which cannot be converted to RGB ({error}); "
                "save it again as an ordinary RGB JPEG or PNG."
            ) from None
    return _upscale(rgb, min_side)


def verify_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap check that a file is an image: size, header and (for PNG) chunk checksums.

    Does not decode the pixels, so a truncated JPEG can pass; `load_image` finds those.
    Raises `ImageError` naming the problem.
    """
    name = _describe(source)
    with _open(source, max_pixels) as opened:
        try:
            opened.verify()
        except Exception as error:
            raise _damaged(name, error) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image in any PIL mode to RGB, compositing transparency on white.

    16-bit and 32-bit greyscale are scaled to 8 bits by their nominal range, not clipped,
    so a 16-bit scan does not come out white.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        # La has no direct conversion to RGBA; LA does.
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)  # (H, W)
    if image.mode.startswith("I;16"):
        full_scale = 65535.0
    else:
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        # I and F carry no declared range; infer the usual ones before stretching.
        if image.mode == "F" and low >= 0.0 and high <= 1.0:
            full_scale = 1.0
        elif low >= 0.0 and high <= 255.0:
            full_scale = 255.0
        elif low >= 0.0 and high <= 65535.0:
            full_scale = 65535.0
        else:
            values = values - low
            full_scale = max(high - low, 1e-12)
    grey = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _upscale(image: Image.Image, min_side: int) -> Image.Image:
    width, height = image.size
    short = min(width, height)
    if min_side <= 0 or short >= min_side:
        return image
    scale = min_side / short
    size = (max(min_side, round(width * scale)), max(min_side, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def _describe(source: ImageSource) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"image data of {len(source)} bytes"
    return f"image {os.fspath(source)}"


# Opens lazily (header only) and refuses files that are empty, missing, too large or too
# elongated.
def _open(source: ImageSource, max_pixels: int, max_aspect_ratio: float = 0) -> Image.Image:
    name = _describe(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("image data is empty (0 bytes); pass the contents of an image file.")
        target: io.BytesIO | Path = io.BytesIO(source)
    else:
        target = Path(source)
        if target.is_dir():
            raise ImageError(f"{name} is a folder, not an image file; pass the path of an image.")
        try:
            size = target.stat().st_size
        except FileNotFoundError:
            raise ImageError(f"{name} does not exist; check the path.") from None
        except OSError as error:
            raise ImageError(f"cannot read {name} ({error.strerror}); check its permissions.") from None
        if size == 0:
            raise ImageError(f"{name} is empty (0 bytes); delete it or copy it again from its source.")
    # PIL's own limit (it warns above it) counts too, so its warning becomes our error.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        opened = Image.open(target)
    except Image.DecompressionBombError:
        raise _too_large(name, None, limit) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name} is not an image PIL can read{_text_hint(target)}; "
            "delete it or replace it with a JPEG or PNG."
        ) from None
    except Exception as error:
        raise _damaged(name, error) from None
    width, height = opened.size
    if width * height > limit:
        opened.close()
        raise _too_large(name, (width, height), limit)
    if width == 0 or height == 0:
        opened.close()
        raise ImageError(f"{name} has no pixels ({width}x{height}); delete it or export it again.")
    ratio = max(width, height) / min(width, height)
    if max_aspect_ratio and ratio >= max_aspect_ratio:
        opened.close()
        raise ImageError(
            f"{name} is {width}x{height} pixels, an aspect ratio of {ratio:.0f}:1, and the model reads images "
            f"below {max_aspect_ratio:g}:1; crop it to a less elongated shape."
        )
    return opened


def _text_hint(target: io.BytesIO | Path) -> str:
    # A text file saved as .jpg is usually an HTML error page from a failed download.
    if isinstance(target, Path):
        with open(target, "rb") as file:
            head = file.read(512)
    else:
        head = target.getvalue()[:512]
    if b"\x00" in head:
        return ""
    try:
        # Incremental, so a character cut at byte 512 does not count against the text.
        codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return ""
    return " (it holds text, perhaps an HTML page from a failed download)"


def _damaged(name: str, error: Exception) -> ImageError:
    reason = str(error) or type(error).__name__
    return ImageError(
        f"{name} is damaged or truncated ({reason}); delete it or copy it again from its source."
    )


def _too_large(name: str, size: tuple[int, int] | None, limit: int) -> ImageError:
    dimensions = f"{size[0]}x{size[1]} pixels, " if size else ""
    return ImageError(
        f"{name} is {dimensions}larger than the limit of {limit:,} pixels (a possible decompression "
        "bomb); downscale it, or raise the limit (max_pixels) if you trust the file."
    )
