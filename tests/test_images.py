import hashlib
import io
import os
import subprocess
import sys

import pytest
from PIL import Image, ImageFile, ImageOps

from emovlm_kd.errors import UserError
from emovlm_kd.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    file_sha256,
    is_image_file,
    load_image,
    to_rgb,
    verify_image,
)

WHITE = (255, 255, 255)


def save(tmp_path, image, name, **params):
    path = tmp_path / name
    image.save(path, **params)
    return path


def write(path, data):
    path.write_bytes(data)
    return path


def truncated(tmp_path, name, fmt):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, fmt)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def palette_image(rgb, size=(4, 4)):
    image = Image.new("P", size, 0)
    image.putpalette([*rgb] + [0] * 765)
    return image


# (file name, image, expected RGB of every pixel after loading)
MODE_CASES = {
    "1": ("bilevel.png", Image.new("1", (4, 4), 1), WHITE),
    "L": ("grey.png", Image.new("L", (4, 4), 100), (100, 100, 100)),
    "P": ("palette.png", palette_image((10, 20, 30)), (10, 20, 30)),
    "LA": ("grey_alpha.png", Image.new("LA", (4, 4), (0, 0)), WHITE),
    "RGBA": ("rgba.png", Image.new("RGBA", (4, 4), (255, 0, 0, 0)), WHITE),
    "CMYK": ("cmyk.tif", Image.new("CMYK", (4, 4), (0, 0, 0, 0)), WHITE),
    "I;16": ("grey16.png", Image.new("I;16", (4, 4), 257 * 100), (100, 100, 100)),
    "I;16B": ("grey16be.tif", Image.new("I;16B", (4, 4), 65535), WHITE),
    "I": ("int32.tif", Image.new("I", (4, 4), 65535), WHITE),
    "F": ("float.tif", Image.new("F", (4, 4), 0.5), (128, 128, 128)),
}


@pytest.mark.parametrize("mode", sorted(MODE_CASES))
def test_every_file_mode_becomes_rgb(tmp_path, mode):
    name, image, expected = MODE_CASES[mode]
    path = save(tmp_path, image, name)
    with Image.open(path) as stored:
        assert stored.mode == mode  # the file really holds the mode under test

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert loaded.size == (4, 4)
    assert [colour for _, colour in loaded.getcolors()] == [expected]


def test_palette_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    path = save(tmp_path, image, "trns.png", transparency=0)

    loaded = load_image(path)

    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((1, 0)) == (0, 0, 255)


def test_half_transparent_pixels_blend_with_white(tmp_path):
    path = save(tmp_path, Image.new("RGBA", (2, 2), (0, 0, 0, 128)), "half.png")
    assert load_image(path).getpixel((0, 0)) == (127, 127, 127)


@pytest.mark.parametrize("mode", ["PA", "La", "RGBa", "I;16L"])
def test_in_memory_only_modes_convert(mode):
    image = Image.new(mode, (3, 2))
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (3, 2)


def test_float_and_int_ranges_are_scaled_not_clipped():
    assert to_rgb(Image.new("F", (1, 1), 200.0)).getpixel((0, 0)) == (200, 200, 200)
    assert to_rgb(Image.new("I", (1, 1), 200)).getpixel((0, 0)) == (200, 200, 200)
    # Negative values carry no nominal range: stretched to 0..255.
    stretched = Image.new("F", (2, 1), -5.0)
    stretched.putpixel((1, 0), 5.0)
    assert [to_rgb(stretched).getpixel((x, 0))[0] for x in (0, 1)] == [0, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(tmp_path, image, "rotated.jpg", exif=exif.tobytes(), quality=95)

    loaded = load_image(path)

    assert loaded.size == (20, 40)
    red, green, blue = loaded.getpixel((10, 5))  # the left edge is now the top
    assert red > 200 and blue < 60


def test_corrupt_exif_keeps_the_image(tmp_path, monkeypatch):
    def broken_exif(image, **kwargs):
        raise SyntaxError("corrupt EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken_exif)
    path = save(tmp_path, Image.new("RGB", (8, 4), (0, 255, 0)), "exif.png")
    assert load_image(path).size == (8, 4)


def test_animation_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = save(tmp_path, frames[0], "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as stored:
        assert stored.n_frames == 3

    assert load_image(path).getpixel((0, 0)) == (255, 0, 0)


def test_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("RGB", (100, 100)), "big.png")

    def no_decoding(self):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match=r"big\.png is 100x100 pixels, larger than the limit of 5,000"):
        load_image(path, max_pixels=5_000)


def test_pil_bomb_error_becomes_image_error(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("RGB", (100, 100)), "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # PIL refuses above twice this
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pil_bomb_warning_becomes_image_error(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("RGB", (100, 100)), "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # PIL only warns between 1x and 2x
    with pytest.raises(ImageError, match="larger than the limit of 6,000"):
        load_image(path)


def test_pil_warnings_are_not_printed(tmp_path):
    # A fresh interpreter: pytest resets warning filters around each test.
    save(tmp_path, Image.new("RGB", (8, 4)), "exif.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05")
    save(tmp_path, Image.new("RGB", (100, 100)), "large.png")
    script = (
        "import sys; from PIL import Image; from emovlm_kd.images import load_image, ImageError\n"
        "load_image(sys.argv[1] + '/exif.jpg')\n"
        "Image.MAX_IMAGE_PIXELS = 6000\n"
        "try: load_image(sys.argv[1] + '/large.png')\n"
        "except ImageError: print('refused')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert result.stdout.strip() == "refused"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("size", "min_side", "expected"),
    [((10, 20), 224, (224, 448)), ((30, 20), 224, (336, 224)), ((300, 400), 224, (300, 400)), ((10, 20), 0, (10, 20))],
)
def test_short_side_is_upscaled_keeping_aspect(tmp_path, size, min_side, expected):
    path = save(tmp_path, Image.new("RGB", size), "small.png")
    assert load_image(path, min_side=min_side).size == expected


def test_bytes_are_loaded_like_files():
    buffer = io.BytesIO()
    Image.new("RGB", (5, 3), (1, 2, 3)).save(buffer, "PNG")
    loaded = load_image(buffer.getvalue())
    assert loaded.size == (5, 3) and loaded.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.jpg", "does not exist"),
        (lambda tmp: write(tmp / "zero.jpg", b""), r"is empty \(0 bytes\)"),
        (lambda tmp: truncated(tmp, "cut.jpg", "JPEG"), "damaged or truncated"),
        (lambda tmp: truncated(tmp, "cut.png", "PNG"), "damaged or truncated"),
        (lambda tmp: write(tmp / "page.jpg", b"<html>Not Found</html>"), "holds text"),
        (lambda tmp: write(tmp / "noise.png", bytes(range(256)) * 4), "not an image PIL can read"),
        (lambda tmp: tmp, "is a folder"),
    ],
    ids=["missing", "zero-byte", "truncated-jpeg", "truncated-png", "text-as-jpg", "binary-junk", "folder"],
)
def test_unusable_files_raise_one_clear_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ImageError, match=message) as caught:
        load_image(path)
    text = str(caught.value)
    assert os.fspath(path) in text
    assert any(hint in text for hint in ("delete it", "check the path", "pass the path"))
    assert isinstance(caught.value, UserError)


def test_empty_bytes_raise():
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_verify_checks_header_only(tmp_path):
    verify_image(save(tmp_path, Image.new("RGB", (4, 4)), "ok.png"))
    with pytest.raises(ImageError, match="holds text"):
        verify_image(write(tmp_path / "text.jpg", b"hello"))
    with pytest.raises(ImageError, match="empty"):
        verify_image(write(tmp_path / "zero.png", b""))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.jpg", True), ("b.JPEG", True), ("c.tiff", True), ("d.webp", True), ("e.txt", False),
     (".hidden.jpg", False), ("._resource.png", False), ("noext", False)],
)
def test_is_image_file(name, expected):
    assert is_image_file(name) is expected


def test_extensions_cover_the_common_formats():
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def test_file_sha256_streams_large_files(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    path = write(tmp_path / "blob.bin", data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageError, match="cannot read"):
        file_sha256(tmp_path / "absent.bin")
