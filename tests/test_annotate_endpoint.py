"""Stage 0 against a real OpenAI-compatible server on loopback, driven by the real `openai` client.

The server injects rate limits, server errors, time-outs and bad answers; a real
subprocess is killed mid-run (SIGKILL) and interrupted (Ctrl-C), and the reruns must end
with every image annotated exactly once.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_chat_server import FakeChatServer

from emovlm_kd.annotate.config import AnnotateConfig
from emovlm_kd.annotate.runner import annotate_dataset
from emovlm_kd.data.annotations import read_annotations
from emovlm_kd.errors import UserError
from emovlm_kd.labels import EMOTION6

# The real `emovlm-kd` entry point with only the annotate command registered, so a
# subprocess starts in about a second instead of importing every stage.
# A shell that starts the suite in the background (`make test &`) ignores SIGINT, and Python
# keeps an inherited SIG_IGN: the child takes Ctrl-C back, as a terminal's command would have it.
CLI = (
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "import sys, emovlm_kd.apps.cli as cli; "
    "cli.COMMAND_GROUPS[:] = [group for group in cli.COMMAND_GROUPS if group[0] == 'annotate']; "
    "sys.exit(cli.main(sys.argv[1:]))"
)
# Retries in milliseconds, not seconds.
FAST_RETRIES = ["--retry-base-delay", "0.002", "--retry-max-delay", "0.01"]


def config(sample_root, out, server, **overrides) -> AnnotateConfig:
    settings = dict(
        data=str(sample_root), out=str(out), model="fake-vlm", base_url=server.base_url,
        retry_base_delay=0.002, retry_max_delay=0.01, timeout=5.0,
    )
    return AnnotateConfig(**{**settings, **overrides})


def images_in(path: Path) -> list[str]:
    return [json.loads(line)["image"] for line in path.read_text().splitlines()]


def cli_args(sample_root, out, server, *extra) -> list[str]:
    return ["annotate", "--data", str(sample_root), "--out", str(out), "--model", "fake-vlm",
            "--base-url", server.base_url, *FAST_RETRIES, *extra]


def run_cli(argv, monkeypatch, capsys) -> tuple[int, str, str]:
    from emovlm_kd.apps import cli

    monkeypatch.setattr(cli, "COMMAND_GROUPS", [g for g in cli.COMMAND_GROUPS if g[0] == "annotate"])
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_failures_are_retried_bad_answers_flagged_and_reruns_skip_done_images(
    sample_root, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "annotations.jsonl"
    script = ["429", "500", "timeout", "garbage", "no sections", "leak"]
    with FakeChatServer(script, timeout_sleep=2.0) as server:
        report = annotate_dataset(config(sample_root, out, server, limit=12, concurrency=3, timeout=1.0))
        # 12 answers, 4 of them after a retry (429, 500, time-out, unreadable body).
        assert server.requests == 16
        assert report.complete and (report.written, report.flagged) == (12, 2)
        rerun = annotate_dataset(config(sample_root, out, server, limit=12))
        assert (rerun.written, rerun.already_done, server.requests) == (0, 12, 16)

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["image"] for r in records}) == len(records) == 12
    fields = {"image", "label", "key_elements", "reasoning", "raw", "model", "mode", "flags"}
    assert all(set(r) == fields for r in records)
    flags = sorted(tuple(r["flags"]) for r in records if r["flags"])
    assert flags == [("missing key_elements", "missing reasoning"), ("names the true label",)]
    good = [r for r in records if not r["flags"]]
    assert all(r["key_elements"].strip() and r["reasoning"].strip() and r["model"] == "fake-vlm" for r in good)

    # Training reads the file as written: relative paths resolve, flagged records are marked.
    annotations = read_annotations(out, EMOTION6, [sample_root])
    assert all(a.image.is_file() for a in annotations)
    assert sum(bool(a.flags) for a in annotations) == 2

    code, printed, _ = run_cli(["annotate", "--check", str(out)], monkeypatch, capsys)
    assert code == 0
    assert "12 records (emotion6), 10 usable for training, 2 flagged" in printed
    assert "names the true label" in printed and "missing reasoning" in printed


def test_images_still_failing_are_listed_and_the_exit_status_says_so(sample_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer(["500", "503", "502"]) as server:
        argv = cli_args(sample_root, out, server, "--limit", "2", "--concurrency", "1", "--max-retries", "2")
        code, printed, errors = run_cli(argv, monkeypatch, capsys)
        assert code == 1
        assert "failed: train/anger/" in errors and "HTTP 502" in errors and "gave up after 3 attempts" in errors
        assert "error: 1 image(s) are not annotated yet" in errors
        assert "Traceback" not in errors
        assert len(images_in(out)) == 1
        # The rerun does only the image that failed.
        code, printed, errors = run_cli(argv, monkeypatch, capsys)
        assert code == 0 and "1 record(s) written (0 flagged), 1 already there" in printed
    assert len(set(images_in(out))) == 2


def test_an_unreachable_endpoint_gives_listed_failures_then_stops(sample_root, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = AnnotateConfig(
        data=str(sample_root), out=str(tmp_path / "a.jsonl"), model="m", base_url=f"http://127.0.0.1:{port}/v1",
        limit=5, concurrency=1, max_retries=1, retry_base_delay=0.001, give_up_after=3,
    )
    report = annotate_dataset(settings)
    assert len(report.failures) == 3 and report.not_attempted == 2 and report.written == 0
    assert all("cannot reach" in failure.reason for failure in report.failures)


def test_a_refused_key_stops_the_run_with_one_sentence(sample_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMOVLM_TEST_KEY", "wrong-key")
    with FakeChatServer(["401"] * 5) as server:
        code, _, errors = run_cli(
            cli_args(sample_root, tmp_path / "a.jsonl", server, "--limit", "3", "--api-key-env", "EMOVLM_TEST_KEY"),
            monkeypatch, capsys,
        )
        assert server.authorization == "Bearer wrong-key"
    assert code == 1 and errors.strip().splitlines()[-1].startswith("error: ")
    assert "refused the API key (HTTP 401)" in errors and "Traceback" not in errors


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--api-key-env", "EMOVLM_UNSET_KEY"], "EMOVLM_UNSET_KEY (from --api-key-env) is not set"),
        (["--taxonomy", "plutchik"], "unknown taxonomy 'plutchik'"),
    ],
)
def test_bad_input_is_one_sentence(sample_root, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.delenv("EMOVLM_UNSET_KEY", raising=False)
    with FakeChatServer() as server:
        code, _, errors = run_cli(cli_args(sample_root, tmp_path / "a.jsonl", server, *extra), monkeypatch, capsys)
    assert code == 1 and message in errors and "Traceback" not in errors


def _start(argv, tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", CLI, *argv], stdout=log, stderr=subprocess.STDOUT, env=env), log


def _wait_for_lines(path: Path, count: int, process) -> None:
    deadline = time.monotonic() + 60
    while not (path.exists() and path.read_bytes().count(b"\n") >= count):
        assert process.poll() is None, "annotate ended before it could be interrupted"
        assert time.monotonic() < deadline, f"{path} never reached {count} records"
        time.sleep(0.01)


def test_a_killed_run_resumes_with_every_image_annotated_exactly_once(sample_root, tmp_path):
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer() as server:
        argv = cli_args(sample_root, out, server, "--limit", "30", "--concurrency", "2")
        # After 10 answers the server holds every request, so the kill lands mid-run.
        server.hold_after = 10
        process, log = _start(argv, tmp_path, "killed")
        _wait_for_lines(out, 10, process)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        log.close()
        server.release.set()
        assert len(images_in(out)) == 10
        # A machine crash can also leave half a line behind; the rerun must repair it.
        with open(out, "ab") as file:
            file.write(b'{"image": "train/joy/openmoji_1F600_00.png", "label": "jo')

        process, log = _start(argv, tmp_path, "resumed")
        assert process.wait(timeout=120) == 0, (tmp_path / "resumed.log").read_text()
        log.close()
        answered = sorted(server.answered.values())
    images = images_in(out)
    assert len(images) == len(set(images)) == 30
    # Only the requests in flight at the kill (at most --concurrency) were asked twice.
    assert sum(answered) <= 32 and max(answered) <= 2
    assert "cut a torn last line" in (tmp_path / "resumed.log").read_text()


def test_ctrl_c_keeps_every_finished_record(sample_root, tmp_path):
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer() as server:
        server.hold_after = 5
        argv = cli_args(sample_root, out, server, "--limit", "20", "--concurrency", "2")
        process, log = _start(argv, tmp_path, "interrupted")
        _wait_for_lines(out, 5, process)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        log.close()
        server.release.set()
    assert "interrupted; finished work is kept" in (tmp_path / "interrupted.log").read_text()
    images = images_in(out)
    assert len(images) == len(set(images)) == 5


def test_the_local_backend_annotates_with_the_tiny_vlm(small_manifest, tmp_path, monkeypatch, tiny_adapter):
    from emovlm_kd.models import registry

    # `--model tiny` resolves to the offline preset; the session's tiny VLM stands in for a fresh copy.
    loaded = []
    monkeypatch.setattr(registry, "load_vlm", lambda preset, **kwargs: loaded.append(preset.name) or tiny_adapter)
    out = tmp_path / "local.jsonl"
    local = dict(data=str(small_manifest), backend="local", limit=2, max_tokens=6)
    report = annotate_dataset(AnnotateConfig(out=str(out), model="tiny", **local))
    assert loaded == ["tiny"] and (report.written, report.flagged) == (2, 2)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["model"] == "tiny" and r["image"].startswith("train/") for r in records)
    # Random weights answer gibberish: no sections, so nothing of it would train the VLM.
    assert all("missing key_elements" in r["flags"] for r in records)
    with pytest.raises(UserError, match="unknown offline model"):
        annotate_dataset(AnnotateConfig(out=str(tmp_path / "x.jsonl"), model="offline:nope", **local))


def test_a_parquet_dataset_with_its_own_column_names_is_annotated(sample_root, tmp_path, monkeypatch, capsys):
    import datasets

    rows = [json.loads(line) for line in (sample_root / "manifest.jsonl").read_text().splitlines()]
    chosen = [row for row in rows if row["split"] == "train"][:6]
    table = datasets.Dataset.from_dict(
        {"picture": [{"bytes": (sample_root / row["image"]).read_bytes(), "path": None} for row in chosen],
         "emotion": [row["label"] for row in chosen]},
        features=datasets.Features({"picture": datasets.Image(), "emotion": datasets.Value("string")}),
    )
    (tmp_path / "data").mkdir()
    table.to_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")  # as on the Hub: the train split
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer() as server:
        code, stdout, stderr = run_cli(cli_args(tmp_path / "data", out, server, "--image-column", "picture",
                                                "--label-column", "emotion"), monkeypatch, capsys)
    assert code == 0, stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    from emovlm_kd.data.datasets import load_dataset

    # Every image of the train split (val is carved from it, as for folders), once.
    train = load_dataset(tmp_path / "data", image_column="picture", label_column="emotion").split("train")
    assert len(records) == len(train) == 5
    assert sorted(record["label"] for record in records) == sorted(sample.label for sample in train)
    assert all(record["key_elements"] and record["reasoning"] and not record["flags"] for record in records)
