"""Whatever a user hands over (images, configs, command lines) ends in a result or in one clear
sentence, never in a crash; one bad file never stops the others.

Images: a corpus of named hostile files (truncated, zero-byte, wrong extension, huge
dimensions, odd modes, animated, corrupt EXIF, ...) plus seeded and hypothesis-driven
byte mutations of valid files, through `load_image`, `predict_paths` and `emovlm-kd predict`.
Configs: unknown keys and wrong types in every section, in YAML files and overrides, and
the serve/annotate command lines.
"""

import io
import json
import os
import random
import struct
import time
import zlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from reliability import tally

from emovlm_kd.apps.cli import main
from emovlm_kd.config import RunConfig, load_config
from emovlm_kd.errors import UserError
from emovlm_kd.images import ImageError, load_image
from emovlm_kd.run_folder import MAX_ASPECT_RATIO, MIN_IMAGE_SIDE

pytestmark = [
    pytest.mark.reliability,
    # PIL's notes on the damaged files (truncated tags, bombs): the loader's answer is what counts.
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

SEED = int(os.environ.get("EMOVLM_KD_RELIABILITY_SEED", "9"))
MUTATIONS = int(os.environ.get("EMOVLM_KD_FUZZ_MUTATIONS", "5000"))


# ---- the corpus -------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(size=(40, 30), mode="RGB") -> Image.Image:
    return Image.effect_noise(size, 60).convert(mode)


def animated(fmt: str) -> bytes:
    frames = [noise((24, 24)) for _ in range(3)]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (with a valid CRC) claims `width` x `height`, over a tiny body."""
    data = bytearray(encoded(noise((8, 8)), "PNG"))
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(noise((8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def jpeg_with_exif(exif: bytes) -> bytes:
    return encoded(noise(), "JPEG", exif=exif)


def orientation_exif(value) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


# Valid files of many formats and modes: the seeds of the byte mutations.
SEEDS = {
    "png-rgb": encoded(noise(), "PNG"),
    "png-rgba": encoded(noise(mode="RGBA"), "PNG"),
    "png-palette": encoded(noise(mode="P"), "PNG"),
    "png-16bit": encoded(noise(mode="I;16"), "PNG"),
    "jpeg": encoded(noise(), "JPEG"),
    "jpeg-grey": encoded(noise(mode="L"), "JPEG"),
    "jpeg-cmyk": encoded(noise(mode="CMYK"), "JPEG"),
    "jpeg-progressive": encoded(noise(), "JPEG", progressive=True),
    "jpeg-exif": jpeg_with_exif(orientation_exif(6)),
    "gif": encoded(noise(mode="P"), "GIF"),
    "gif-animated": animated("GIF"),
    "webp": encoded(noise(), "WEBP"),
    "webp-animated": animated("WEBP"),
    "apng": animated("PNG"),
    "bmp": encoded(noise(), "BMP"),
    "tiff": encoded(noise(), "TIFF"),
    "tiff-float": encoded(noise(mode="F"), "TIFF"),
    "ico": encoded(noise((32, 32), "RGBA"), "ICO"),
    "ppm": encoded(noise(), "PPM"),
    "tga": encoded(noise(), "TGA"),
}

# Named hostile files: (file name, bytes, True if it must load).
HOSTILE = {
    "zero-byte": ("zero.jpg", b"", False),
    "one byte": ("one.png", b"\x89", False),
    "truncated png": ("cut.png", SEEDS["png-rgb"][: len(SEEDS["png-rgb"]) // 2], False),
    "truncated jpeg": ("cut.jpg", SEEDS["jpeg"][: len(SEEDS["jpeg"]) // 2], False),
    "truncated gif": ("cut.gif", SEEDS["gif-animated"][:200], False),
    "header only": ("head.png", SEEDS["png-rgb"][:33], False),
    "png named .jpg": ("png.jpg", SEEDS["png-rgb"], True),
    "jpeg named .png": ("jpeg.png", SEEDS["jpeg"], True),
    "gif named .webp": ("gif.webp", SEEDS["gif"], True),
    "text named .jpg": ("page.jpg", b"<html><body>404 Not Found</body></html>", False),
    "binary junk": ("junk.png", bytes(random.Random(1).randrange(256) for _ in range(4096)), False),
    "100000x100000 png": ("huge.png", png_claiming(100_000, 100_000), False),
    "65535x65535 gif": ("huge.gif", gif_claiming(65_535, 65_535), False),
    "1x4000 png": ("thin.png", encoded(noise((1, 4000)), "PNG"), False),
    "5000x20 png": ("strip.png", encoded(noise((5000, 20)), "PNG"), False),
    "1x1 png": ("dot.png", encoded(noise((1, 1)), "PNG"), True),
    "zero-width png": ("zero-width.png", png_claiming(0, 8), False),
    "bilevel": ("bilevel.png", encoded(noise(mode="1"), "PNG"), True),
    "grey + alpha": ("la.png", encoded(noise(mode="LA"), "PNG"), True),
    "cmyk jpeg": ("cmyk.jpg", SEEDS["jpeg-cmyk"], True),
    "16-bit grey": ("grey16.png", SEEDS["png-16bit"], True),
    "32-bit float tiff": ("float.tiff", SEEDS["tiff-float"], True),
    "YCbCr tiff": ("ycbcr.tif", encoded(noise(mode="YCbCr"), "TIFF"), True),
    "LAB tiff": ("lab.tif", encoded(noise(mode="LAB"), "TIFF"), True),
    "animated gif": ("anim.gif", SEEDS["gif-animated"], True),
    "animated webp": ("anim.webp", SEEDS["webp-animated"], True),
    "animated png": ("anim.png", SEEDS["apng"], True),
    "exif orientation 9": ("orient9.jpg", jpeg_with_exif(orientation_exif(9)), True),
    "exif orientation 65535": ("orient-max.jpg", jpeg_with_exif(orientation_exif(65535)), True),
    "exif garbage": ("exif-garbage.jpg", jpeg_with_exif(b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x00" * 20), True),
    "exif truncated": ("exif-cut.jpg", jpeg_with_exif(b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05"), True),
}


def check_error(error: ImageError, source: str) -> None:
    text = str(error)
    assert source in text and text.endswith(".") and "\n" not in text, text
    assert any(hint in text for hint in ("delete it", "check", "pass", "downscale", "crop", "save it", "export")), text


def try_load(data: bytes, **limits) -> bool:
    """True when `data` loads as RGB; False for a clean ImageError. Anything else is a crash."""
    tally["inputs"] += 1
    try:
        image = load_image(data, min_side=MIN_IMAGE_SIDE, **limits)
    except ImageError as error:
        tally["rejected"] += 1
        check_error(error, f"image data of {len(data)} bytes")
        return False
    except Exception:
        tally["crashes"] += 1
        raise
    assert image.mode == "RGB" and min(image.size) >= MIN_IMAGE_SIDE
    return True


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # cut short
        return bytes(data[: rng.randrange(len(data))])
    if kind == 1:  # a few bytes changed
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 2:  # junk inserted
        at = rng.randrange(len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:  # a header field (size, offset, count) set to an extreme
        at = rng.randrange(min(len(data), 64))
        data[at : at + 4] = struct.pack(">I", rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
    else:  # a block repeated
        at = rng.randrange(len(data))
        data[at:at] = data[at : at + rng.randint(1, 256)]
    return bytes(data)


# ---- load_image -------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_load_or_say_why(tmp_path, case):
    name, data, usable = HOSTILE[case]
    path = tmp_path / name
    path.write_bytes(data)
    tally["inputs"] += 1
    try:
        image = load_image(path, min_side=MIN_IMAGE_SIDE, max_aspect_ratio=MAX_ASPECT_RATIO)
    except ImageError as error:
        tally["rejected"] += 1
        check_error(error, str(path))
        assert not usable, f"{case} should load: {error}"
        return
    assert usable, f"{case} loaded, but it should be refused"
    assert image.mode == "RGB" and min(image.size) >= MIN_IMAGE_SIDE


def test_seeded_byte_mutations_never_crash_the_loader():
    rng = random.Random(SEED)
    names = sorted(SEEDS)
    loaded = 0
    began = time.monotonic()
    for _ in range(MUTATIONS):
        loaded += try_load(mutate(SEEDS[rng.choice(names)], rng), max_pixels=4_000_000)
    print(f"\n{MUTATIONS} mutated files: {loaded} loaded, {MUTATIONS - loaded} refused, {time.monotonic() - began:.1f} s")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 1 << 16),
)
def test_hypothesis_mutations_never_crash_the_loader(seed, edits, cut):
    data = bytearray(SEEDS[seed])
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    if data:
        try_load(bytes(data), max_pixels=4_000_000)


def test_special_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    for path in (fifo, loop, tmp_path / "folder.jpg"):
        if path.name == "folder.jpg":
            path.mkdir()
        tally["inputs"] += 1
        with pytest.raises(ImageError) as caught:
            load_image(path)
        tally["rejected"] += 1
        check_error(caught.value, str(path))


# ---- the predict path: one result per file, in order ------------------------------------


def test_predict_cli_gives_every_file_its_row_in_order(trained, sample_root, tmp_path, capsys):
    good = sorted((sample_root / "test").rglob("*.png"))[:3]
    files = []
    for index, case in enumerate(sorted(HOSTILE)):
        name, data, _ = HOSTILE[case]
        path = tmp_path / f"{index:02d}-{name}"
        path.write_bytes(data)
        files.append(path)
        if index % 10 == 0:
            files.append(good[index // 10 % len(good)])
    code = main(["predict", "--run", str(trained[0]), "--format", "json", "--batch-size", "4", *map(str, files)])
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert "Traceback" not in err
    assert [row["image"] for row in rows] == [str(path) for path in files]
    usable = {str(tmp_path / f"{i:02d}-{HOSTILE[c][0]}") for i, c in enumerate(sorted(HOSTILE)) if HOSTILE[c][2]}
    usable |= {str(path) for path in good}
    for row in rows:
        tally["inputs"] += 1
        if row["image"] in usable:
            assert row["error"] is None and row["label"], row
        else:
            tally["rejected"] += 1
            assert row["label"] is None and row["error"].endswith("."), row
    failed = len(rows) - sum(row["error"] is None for row in rows)
    assert code == 1 and f"{failed} of {len(files)} images have no prediction" in err


image_specs = st.tuples(
    st.integers(1, 320),
    st.integers(1, 320),
    st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK"]),
    st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"]),
    st.sampled_from(["whole", "truncated", "junk", "empty"]),
)


def make_file(folder: Path, index: int, spec) -> Path:
    width, height, mode, fmt, damage = spec
    image = noise((width, height), mode)
    try:
        data = encoded(image, fmt)
    except (OSError, ValueError, KeyError):  # a mode this format cannot store
        data = encoded(image.convert("RGB"), fmt)
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "junk":
        data = bytes(b ^ 0x5A for b in data)
    elif damage == "empty":
        data = b""
    path = folder / f"{index}.{fmt.lower()}"
    path.write_bytes(data)
    return path


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(image_specs, min_size=1, max_size=6), batch_size=st.integers(1, 4))
def test_predict_paths_answers_each_file_once_in_order(model, tmp_path_factory, specs, batch_size):
    folder = tmp_path_factory.mktemp("fuzz")
    paths = [make_file(folder, index, spec) for index, spec in enumerate(specs)]
    try:
        predictions = list(model.predict_paths(paths, batch_size=batch_size))
    except Exception:
        tally["crashes"] += 1
        raise
    assert [p.image for p in predictions] == [str(path) for path in paths]
    labels = model.taxonomy.labels
    for prediction, (width, height, _, _, damage) in zip(predictions, specs):
        tally["inputs"] += 1
        too_long = max(width, height) / min(width, height) >= MAX_ASPECT_RATIO
        if prediction.error is None:
            assert prediction.label in labels and not too_long and damage in ("whole", "junk")
        else:
            tally["rejected"] += 1
            assert prediction.label is None and prediction.error.endswith(".")
            assert damage != "whole" or too_long, prediction.error


def test_one_image_the_model_fails_on_does_not_cost_the_batch(model, tmp_path, monkeypatch):
    sizes = [(50, 40), (60, 45), (70, 50), (80, 60)]
    paths = [tmp_path / f"{width}.png" for width, _ in sizes]
    for path, size in zip(paths, sizes):
        noise(size).save(path)
    real = model.predict_images

    def fails_on_the_second(images, explain=False):
        if any(image.size == sizes[1] for image in images):
            raise ValueError("the processor cannot take this image")
        return real(images, explain=explain)

    monkeypatch.setattr(model, "predict_images", fails_on_the_second)
    predictions = list(model.predict_paths(paths, batch_size=4))
    tally["inputs"] += len(paths)
    tally["rejected"] += 1
    assert [p.error is None for p in predictions] == [True, False, True, True]
    assert "could not be classified (ValueError: the processor cannot take this image)" in predictions[1].error


# ---- configs: unknown keys and wrong types, named ---------------------------------------

SECTIONS = {name: type(value) for name, value in vars(RunConfig()).items() if hasattr(value, "__dataclass_fields__")}
WRONG = {
    int: ["three", 1.5, [1], {"a": 1}, True],
    float: ["fast", [0.1], {"a": 1}, True],
    str: [5, [1, 2], {"a": 1}, True],
    bool: ["perhaps", 2, [True]],
}


def settings_of(section_class) -> list[tuple[str, type]]:
    import typing

    hints = typing.get_type_hints(section_class)
    found = []
    for name, hint in hints.items():
        kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
        found.append((name, kinds[0]))
    return found


def refused(data: dict | None, overrides=(), tmp_path: Path | None = None) -> str:
    tally["inputs"] += 1
    with pytest.raises(UserError) as caught:
        if tmp_path is None:
            load_config(None, list(overrides))
        else:
            path = tmp_path / "config.yaml"
            path.write_text(yaml.safe_dump(data))
            load_config(path, list(overrides))
    tally["rejected"] += 1
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message
    return message


@pytest.mark.parametrize("section", [None, *sorted(SECTIONS)])
def test_unknown_keys_are_named_in_every_section(tmp_path, section):
    key = "bogus_setting"
    nested = {key: 1} if section is None else {section: {key: 1}}
    dotted = key if section is None else f"{section}.{key}"
    assert f"'{dotted}'" in refused(nested, tmp_path=tmp_path)
    assert f"'{dotted}'" in refused(None, [f"{dotted}=1"])


@pytest.mark.parametrize("section", ["(top)", *sorted(SECTIONS)])
def test_wrong_types_are_named_for_every_setting(tmp_path, section):
    owner = RunConfig if section == "(top)" else SECTIONS[section]
    for name, kind in settings_of(owner):
        if section == "(top)" and name in SECTIONS:
            continue
        dotted = name if section == "(top)" else f"{section}.{name}"
        for value in WRONG[kind]:
            data = {name: value} if section == "(top)" else {section: {name: value}}
            assert f"'{dotted}'" in refused(data, tmp_path=tmp_path), (dotted, value)
    if section != "(top)":
        for value in (3, "text", [1, 2]):
            assert f"'{section}'" in refused({section: value}, tmp_path=tmp_path)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(
        st.sampled_from(["preset", "seed", "data", "root", "teacher", "epochs", "lr", "distill", "depth", "gate", "x"])
        | st.integers(-2, 2)
        | st.none(),
        inner,
        max_size=4,
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=yaml_values)
def test_any_yaml_document_gives_a_config_or_one_sentence(tmp_path, document):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    tally["inputs"] += 1
    try:
        load_config(path)
    except UserError as error:
        tally["rejected"] += 1
        assert str(error).endswith(".")
    except Exception:
        tally["crashes"] += 1
        raise


def test_yaml_that_tries_to_run_code_or_explode_is_refused_quickly(tmp_path):
    marker = tmp_path / "ran"
    hostile = {
        "code": f"preset: !!python/object/apply:os.mkdir ['{marker}']\n",
        # Nine levels of nine aliases: 9^9 strings if anything expanded it, even to print it.
        "aliases": "preset:\n  - &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"  - &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
        "not a mapping": "- preset\n- tiny\n",
        "binary": "\x00\x01\x02",
    }
    for name, text in hostile.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        began = time.monotonic()
        tally["inputs"] += 1
        with pytest.raises(UserError):
            load_config(path)
        tally["rejected"] += 1
        assert time.monotonic() - began < 2, name
    assert not marker.exists()


def cli_refusal(capsys, argv) -> str:
    tally["inputs"] += 1
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    tally["rejected"] += 1
    return capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "annotate"])
def test_serve_and_annotate_flags_refuse_unknown_names_and_wrong_types(capsys, tmp_path, command):
    import dataclasses

    from emovlm_kd.annotate.config import AnnotateConfig
    from emovlm_kd.apps.server.config import ServerConfig

    base = ["serve", "--run", str(tmp_path)] if command == "serve" else ["annotate"]
    assert "--bogus-setting" in cli_refusal(capsys, [*base, "--bogus-setting", "1"])
    owner = ServerConfig if command == "serve" else AnnotateConfig
    for setting, kind in settings_of(owner):
        if kind in (int, float):
            flag = "--" + setting.replace("_", "-")
            assert flag in cli_refusal(capsys, [*base, flag, "lots"]), flag
    assert dataclasses.fields(owner)


# ---- outputs that cannot be written -------------------------------------------------------

# Each command that writes: its command line, the flag naming its output (None: positional),
# whether that output is a folder, and the work that must not start when it cannot be written.
WRITERS = {
    "bench": (["bench"], "--out", False, "emovlm_kd.apps.bench.figures.run_bench"),
    "predict": (["predict", "--run", "{run}", "{images}"], "--out", False,
                "emovlm_kd.pipeline.EmoVLMKD.from_pretrained"),
    "evaluate": (["evaluate", "--run", "{run}", "--no-report"], "--out", True,
                 "emovlm_kd.analysis.evaluation.score_run"),
    "ablate": (["ablate", "--run", "{run}"], "--out", True, "emovlm_kd.analysis.ablation.ablate"),
    "export": (["export", "--run", "{run}"], "--out", True, "emovlm_kd.apps.export.export_run"),
    "train": (["train", "--config", "{config}"], "--out", True, "emovlm_kd.stages.runner.train"),
    "demo": (["demo"], "--out", True, "emovlm_kd.data.sample.build_sample_dataset"),
    "demo --data": (["demo", "--out", "{tmp}/demo"], "--data", True, "emovlm_kd.data.sample.build_sample_dataset"),
    "data sample": (["data", "sample"], None, True, "emovlm_kd.data.sample.build_sample_dataset"),
    "annotate": (["annotate", "--data", "{images}", "--model", "m"], "--out", False,
                 "emovlm_kd.annotate.runner.make_backend"),
}


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_an_output_that_cannot_be_written_is_refused_before_any_work(command, trained, sample_root, tmp_path,
                                                                     monkeypatch, capsys):
    argv, flag, folder, work = WRITERS[command]

    def started(*args, **kwargs):
        raise AssertionError(f"{command} started its work although its output cannot be written")

    monkeypatch.setattr(work, started)
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    config = Path(__file__).parents[1] / "src" / "emovlm_kd" / "configs" / "demo.yaml"
    fill = {"run": trained[0], "images": sample_root / "test", "config": config, "tmp": tmp_path}
    argv = [part.format(**fill) for part in argv]

    def refusal(output: Path) -> str:
        tally["inputs"] += 1
        assert main([*argv, *([flag] if flag else []), str(output)]) == 2
        tally["rejected"] += 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(output) in lines[0], lines
        return lines[0]

    # A file where a folder would have to be made on the way.
    assert f"{blocker} is a file, not a folder; choose another path." in refusal(blocker / "in" / "out.json")
    # A file where a folder is wanted, or a folder where a file is.
    if folder:
        assert "is a file; give the path of a folder to write." in refusal(blocker)
    else:
        assert "is a folder; give the path of a file to write." in refusal(tmp_path)
    assert blocker.read_text() == "in the way"


def test_an_output_without_write_permission_is_named(tmp_path, monkeypatch):
    from emovlm_kd.io import check_writable

    check_writable(tmp_path / "new" / "deeper" / "out.json", folder=False)  # it may be made: no error
    check_writable(tmp_path, folder=True)
    assert not (tmp_path / "new").exists()  # checking makes nothing
    # The tests may run as root, for whom every folder is writable: what access() says counts.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(UserError, match=f"no write permission on {tmp_path}; choose a path you can write"):
        check_writable(tmp_path / "new" / "out.json", folder=False)


def test_a_write_that_fails_mid_run_is_one_sentence_and_keeps_what_was_written(tmp_path, monkeypatch, capsys):
    import errno

    from emovlm_kd.io import atomic_path, atomic_write_text

    out = tmp_path / "out"

    def the_disk_fills_up(folder, seed=0):
        atomic_write_text(out / "finished.txt", "finished\n")
        with atomic_path(out / "next.txt") as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    monkeypatch.setattr("emovlm_kd.data.sample.build_sample_dataset", the_disk_fills_up)
    assert main(["data", "sample", str(out)]) == 1
    # Named as the user knows it (not the temporary file), with what to do.
    assert capsys.readouterr().err.strip().splitlines() == [(
        f"error: No space left on device: {out / 'next.txt'}; what was finished is kept: fix that, then rerun the "
        "same command (training, predict --out and annotate resume; -v shows where it happened).")]
    assert sorted(path.name for path in out.iterdir()) == ["finished.txt"]  # no half file, no temporary
    with pytest.raises(OSError, match="No space left"):  # -v: the traceback, for a bug report
        main(["-v", "data", "sample", str(out)])


def test_a_reader_that_stops_early_ends_the_command_quietly():
    import subprocess
    import sys

    # `emovlm-kd presets | head -1`: the pipe closes after one line, while lines remain to print
    # (each written as printed; counting the model sizes between them takes seconds).
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = subprocess.Popen([sys.executable, "-m", "emovlm_kd", "presets"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=environment)
    assert command.stdout.readline() == b"model presets:\n"
    command.stdout.close()
    assert command.wait(timeout=120) == 1
    assert command.stderr.read() == b""  # no traceback, no "Exception ignored" from the final flush
