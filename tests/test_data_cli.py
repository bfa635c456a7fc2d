import io
import re
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from emovlm_kd.apps import cli


@pytest.fixture
def run(capsys):
    """Run `emovlm-kd ...` in-process; returns (exit code, stdout, stderr)."""

    def invoke(*argv):
        code = cli.main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    return invoke


def write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (6, 6), (i * 20, 90, 160)).save(folder / f"{i}.png")


def table_row(report: str, name: str) -> list[int]:
    line = next(line for line in report.splitlines() if line.split() and line.split()[0] == name)
    return [int(value) for value in line.split()[1:]]


def test_check_counts_a_good_tree(run, tmp_path):
    write_images(tmp_path / "train" / "Sad", 10)
    write_images(tmp_path / "train" / "content", 20)
    write_images(tmp_path / "val" / "sadness", 2)
    write_images(tmp_path / "test" / "Contentment", 3)

    code, out, err = run("data", "check", tmp_path)

    assert code == 0
    assert "taxonomy mikels8" in out
    assert table_row(out, "sadness") == [10, 2, 0, 12]
    assert table_row(out, "contentment") == [20, 0, 3, 23]
    assert table_row(out, "awe") == [0, 0, 0, 0]
    assert table_row(out, "total") == [30, 2, 3, 35]
    assert "problems: none" in out and "result: usable." in out


def test_check_reports_everything_wrong_with_a_broken_tree(run, tmp_path):
    write_images(tmp_path / "train" / "fear", 4)
    write_images(tmp_path / "train" / "meh", 2)
    (tmp_path / "train" / "fear" / "zero.jpg").write_bytes(b"")
    (tmp_path / "train" / "fear" / "page.jpg").write_text("<html>404 Not Found</html>")
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buffer, "JPEG")
    (tmp_path / "train" / "fear" / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    code, out, err = run("data", "check", tmp_path)

    assert code == 1
    assert "unknown class name(s) 'meh'" in out and "accepted names: amusement" in out
    assert re.search(r"zero\.jpg is empty \(0 bytes\); delete it", out)
    assert re.search(r"page\.jpg is not an image .*holds text", out)
    assert re.search(r"cut\.jpg is damaged or truncated", out)
    assert "skipped 3 unreadable image(s)." in out
    assert "the test split is empty" in out
    assert table_row(out, "fear") == [3, 1, 0, 4]  # only the 4 good images, val carved
    assert re.search(r"result: NOT usable: unknown class name\(s\) 'meh'; the test split is empty\.", out)


def test_check_shows_progress_on_stderr_for_many_images(run, tmp_path, monkeypatch):
    from emovlm_kd.data import datasets

    monkeypatch.setattr(datasets, "PROGRESS_FROM", 3)
    write_images(tmp_path / "train" / "awe", 3)
    write_images(tmp_path / "test" / "awe", 1)
    code, out, err = run("data", "check", tmp_path)
    assert code == 0
    assert "checking images" in err and "4/4" in err and "checking images" not in out


def test_strict_makes_corrupt_files_fatal(run, tmp_path):
    write_images(tmp_path / "train" / "positive", 3)
    write_images(tmp_path / "test" / "negative", 2)
    (tmp_path / "test" / "negative" / "zero.png").write_bytes(b"")

    assert run("data", "check", tmp_path)[0] == 0
    code, out, _ = run("data", "check", tmp_path, "--strict")
    assert code == 1
    assert "1 unreadable image(s) under --strict" in out


def test_check_errors_are_one_line_not_tracebacks(run, tmp_path):
    code, out, err = run("data", "check", tmp_path / "missing")
    assert code == 1
    assert re.fullmatch(r"error: dataset .*missing does not exist; pass a dataset folder .*\n", out + err)

    write_images(tmp_path / "train" / "joy", 1)
    code, out, err = run("data", "check", tmp_path, "--preset", "fi", "--taxonomy", "emotion6")
    assert code == 1
    assert "error: preset fi uses taxonomy mikels8" in out + err


def test_taxonomy_option_changes_normalisation(run, tmp_path):
    write_images(tmp_path / "train" / "pos", 2)
    write_images(tmp_path / "test" / "Negatives", 1)
    code, out, _ = run("data", "check", tmp_path, "--taxonomy", "sentiment2")
    assert code == 0
    assert table_row(out, "negative") == [0, 0, 1, 1]


def test_help_explains_each_subcommand(run, capsys):
    for subcommand, phrase in (("check", "count images per split and class"), ("sample", "offline sample dataset")):
        with pytest.raises(SystemExit) as exited:
            cli.main(["data", subcommand, "--help"])
        assert exited.value.code == 0
        assert phrase in capsys.readouterr().out
    code, out, _ = run("data")
    assert code == 2 and "check" in out and "sample" in out


def test_sample_prints_the_builder_summary(run, tmp_path, monkeypatch):
    calls = []

    def build_sample_dataset(out, *, seed=0):
        calls.append((out, seed))
        return {"images": 12, "per_split": {"train": {"joy": 6, "fear": 2}, "val": 2, "test": 2}, "seconds": 1.25}

    fake = types.ModuleType("emovlm_kd.data.sample")
    fake.build_sample_dataset = build_sample_dataset
    monkeypatch.setitem(sys.modules, "emovlm_kd.data.sample", fake)

    code, out, _ = run("data", "sample", tmp_path / "sample", "--seed", "3")

    assert code == 0
    assert calls == [(tmp_path / "sample", 3)]
    assert "wrote 12 images (train 8, val 2, test 2)" in out and "1.2 s" in out
