"""`predict` decodes images in worker threads ahead of the model, writes each batch as it
comes, and finishes an --out file that kill -9 interrupted: every image once, in input order,
byte for byte what an uninterrupted run writes, and no written image predicted again."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from emovlm_kd.apps.cli import main
from emovlm_kd.apps.cli.predict_cmd import RowWriter
from emovlm_kd.pipeline import EmoVLMKD

CRASH = Path(__file__).with_name("predict_crash.py")


def sample_images(sample_root, count: int) -> list[Path]:
    return sorted((sample_root / "test").rglob("*.png"))[:count]


def crash(kill_after: int, counts: Path, argv: list, processes: int = 1) -> int:
    """tests/predict_crash.py in a subprocess (under torchrun for several processes): its exit status."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone"] if processes > 1 else []
    command = [sys.executable, *launcher, str(CRASH), str(kill_after), str(counts), *map(str, argv)]
    # Output to a file, not a pipe: a killed launcher's orphaned children would hold a pipe open.
    with open(counts.with_suffix(".log"), "a") as log:
        finished = subprocess.run(command, cwd=counts.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=600, check=False)
    return finished.returncode


def count_model_images(monkeypatch) -> list[int]:
    """The size of each batch the model runs on from now on, in this process."""
    sizes: list[int] = []
    real = EmoVLMKD.predict_images
    monkeypatch.setattr(EmoVLMKD, "predict_images", lambda self, images, explain=False: sizes.append(len(images))
                        or real(self, images, explain=explain))
    return sizes


def test_workers_decode_ahead_of_the_model_with_the_same_output(trained, sample_root, tmp_path, capsys, monkeypatch):
    from emovlm_kd import pipeline

    (tmp_path / "broken.jpg").write_text("this is not an image")
    good = sample_images(sample_root, 6)
    paths = [*good[:3], tmp_path / "broken.jpg", *good[3:]]
    events = tmp_path / "events"
    real_load, real_predict = pipeline.load_rgb, EmoVLMKD.predict_images

    def load_rgb(path):
        with open(events, "a") as handle:  # appends, in order, from every thread
            handle.write(f"decode {threading.get_ident()} {path}\n")
        return real_load(path)

    def predict_images(self, images, explain=False):
        predictions = real_predict(self, images, explain=explain)
        with open(events, "a") as handle:
            handle.write("model\n")
        return predictions

    monkeypatch.setattr(pipeline, "load_rgb", load_rgb)
    monkeypatch.setattr(EmoVLMKD, "predict_images", predict_images)
    outputs = {}
    for workers in (0, 2):
        events.write_text("")
        code = main(["predict", "--run", str(trained[0]), "--format", "json", "--batch-size", "2",
                     "--workers", str(workers), *map(str, paths)])
        outputs[workers], err = capsys.readouterr()
        assert code == 1 and "1 of 7 images have no prediction" in err
        log = events.read_text().splitlines()
        decoders = {int(line.split()[1]) for line in log if line.startswith("decode")}
        main_thread = threading.main_thread().ident
        assert decoders == {main_thread} if workers == 0 else main_thread not in decoders and len(decoders) <= 2
        if workers:
            # Prefetched: the third batch was decoded before the model finished the first.
            third = next(i for i, line in enumerate(log) if line.endswith(f" {paths[4]}"))
            assert third < log.index("model")
    assert outputs[0] == outputs[2]
    rows = [json.loads(line) for line in outputs[0].splitlines()]
    assert [row["image"] for row in rows] == list(map(str, paths))
    assert [row["error"] is None for row in rows] == [True, True, True, False, True, True, True]
    assert "broken.jpg" in rows[3]["error"] and rows[3]["error"].endswith(".")


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_a_killed_predict_finishes_its_out_file_on_rerun(trained, sample_root, tmp_path, monkeypatch, fmt):
    paths = sample_images(sample_root, 9)
    argv = ["predict", "--run", str(trained[0]), "--format", fmt, "--batch-size", "2", "--workers", "1", *map(str, paths)]
    assert main([*argv, "--out", str(tmp_path / "clean")]) == 0
    clean = (tmp_path / "clean").read_bytes()
    out, state = tmp_path / "out", tmp_path / ".out.state"

    assert crash(2, tmp_path / "counts", [*argv, "--out", out]) == -signal.SIGKILL
    written = out.read_bytes()
    # Two batches of two rows (and the CSV header) were in the file when the process died.
    assert clean.startswith(written) and written.count(b"\n") == 4 + (fmt == "csv")
    assert json.loads(state.read_text())["count"] == 9
    with open(out, "ab") as handle:
        handle.write(clean[len(written) : len(written) + 30])  # a row cut short by a kill mid-write

    model_batches = count_model_images(monkeypatch)
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes() == clean
    assert model_batches == [2, 2, 1]  # the five images not written, batched as in the clean run
    assert not state.exists()


def test_another_command_does_not_mix_into_an_unfinished_out(trained, sample_root, tmp_path, monkeypatch, capsys):
    paths = list(map(str, sample_images(sample_root, 6)))
    out = tmp_path / "out"
    argv = ["predict", "--run", str(trained[0]), "--batch-size", "2", "--workers", "0", "--out", str(out)]
    real_write = RowWriter.write

    def interrupted(self, rows):
        real_write(self, rows)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(RowWriter, "write", interrupted)
        assert main([*argv, "--format", "json", *paths]) == 130  # Ctrl-C after the first batch
    capsys.readouterr()
    unfinished = out.read_bytes()
    assert unfinished.count(b"\n") == 2
    for changed in (["--format", "csv", *paths], ["--format", "json", *paths[:5]], ["--format", "json", "--explain", *paths]):
        assert main([*argv, *changed]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out} holds the unfinished predictions of another command")
        assert err.count("\n") == 1 and err.rstrip().endswith("to start it over.")
        assert out.read_bytes() == unfinished
    model_batches = count_model_images(monkeypatch)
    assert main([*argv, "--format", "csv", "--overwrite", *paths]) == 0
    lines = out.read_bytes().decode().split("\r\n")
    assert lines[0].startswith("image,label,error") and [line.split(",")[0] for line in lines[1:-1]] == paths
    assert model_batches == [2, 2, 2] and not (tmp_path / ".out.state").exists()


def test_a_killed_launch_resumes_and_merges_in_order(trained, sample_root, tmp_path, monkeypatch):
    paths = sample_images(sample_root, 6)
    argv = ["predict", "--run-dir", trained[0], "--format", "json", "--batch-size", "1", "--workers", "1",
            "--out", tmp_path / "out", *paths]
    counts = tmp_path / "counts"
    # Each of the two processes dies after writing its second row (or when the launcher
    # stops it, once the other has died).
    assert crash(2, counts, argv, processes=2) != 0
    assert not (tmp_path / "out").exists()
    parts = [tmp_path / f".out.part{rank}" for rank in (0, 1)]
    kept = sum(part.read_text().count("\n") for part in parts)
    assert 2 <= kept <= 4
    with open(parts[0], "a") as handle:
        handle.write('{"image": "cut sh')
    counts.write_text("")
    assert crash(0, counts, argv, processes=2) == 0, counts.with_suffix(".log").read_text()[-3000:]
    assert sum(int(line.split()[1]) for line in counts.read_text().splitlines()) == len(paths) - kept
    assert not list(tmp_path.glob(".out.*"))
    assert main(["predict", "--run", str(trained[0]), "--format", "json", "--batch-size", "1", "--workers", "0",
                 "--out", str(tmp_path / "one"), *map(str, paths)]) == 0
    merged, alone = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()] for name in ("out", "one"))
    # Each launched process runs torch on one thread: sums in another order can move the
    # sixth printed digit, nothing more.
    assert [row["image"] for row in merged] == [row["image"] for row in alone] == list(map(str, paths))
    for resumed, single in zip(merged, alone):
        assert resumed["label"] == single["label"]
        assert all(abs(resumed[part][label] - single[part][label]) < 1e-4
                   for part in ("probs", "vlm", "head") for label in single[part])


def test_the_out_files_name_gives_its_format_unless_format_is_given(trained, sample_root, tmp_path, capsys):
    paths = list(map(str, sample_images(sample_root, 2)))
    argv = ["predict", "--run", str(trained[0]), "--workers", "0", *paths]

    assert main([*argv, "--out", str(tmp_path / "preds.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert [row["image"] for row in rows] == paths and all(row["label"] in row["probs"] for row in rows)

    assert main([*argv, "--out", str(tmp_path / "preds.CSV")]) == 0
    lines = (tmp_path / "preds.CSV").read_text().splitlines()
    assert lines[0].startswith("image,label,error,explanation,probs_") and len(lines) == 3

    assert main([*argv, "--out", str(tmp_path / "preds.txt")]) == 0
    table = [line.split("\t") for line in (tmp_path / "preds.txt").read_text().splitlines()]
    assert [fields[0] for fields in table] == paths and {len(fields) for fields in table} == {3}

    # An explicit --format wins over the name; standard output stays a table.
    assert main([*argv, "--format", "csv", "--out", str(tmp_path / "forced.jsonl")]) == 0
    assert (tmp_path / "forced.jsonl").read_text().startswith("image,label,error")
    capsys.readouterr()
    assert main(argv) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == paths
