"""Stage 0 answers that never need guessing: structured output where the endpoint takes it,
the text parser where it does not, `--retry-flagged` and `--check`, against the loopback
server with the real `openai` client."""

import json

import pytest
from fake_chat_server import ANSWER_STYLES, FakeChatServer
from test_annotate_endpoint import cli_args, config, run_cli

from emovlm_kd.annotate.runner import annotate_dataset


def records_in(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("style", [*ANSWER_STYLES, "structured"])
def test_every_answer_format_leaves_no_record_flagged(style, sample_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "annotations.jsonl"
    structured = style == "structured"
    styles = [] if structured else [ANSWER_STYLES[style]]
    with FakeChatServer(styles=styles, accepts_schema=structured) as server:
        code, printed, _ = run_cli(cli_args(sample_root, out, server, "--limit", "6"), monkeypatch, capsys)
    assert code == 0 and "6 record(s) written (0 flagged)" in printed
    modes = "6 structured (JSON schema), 0 parsed" if structured else "0 structured (JSON schema), 6 parsed"
    assert f"answers: {modes}" in printed
    for record in records_in(out):
        assert "a round face" in record["key_elements"] and "#" in record["key_elements"]
        # The emotion line the fake model ends with never reaches the reasoning.
        assert record["reasoning"].endswith(".") and "emotion" not in record["reasoning"].lower()


@pytest.mark.parametrize("status", [400, 422, 500])
def test_a_refused_response_format_is_remembered_for_the_rest_of_the_run(status, sample_root, tmp_path):
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer(refusal_status=status) as server:
        report = annotate_dataset(config(sample_root, out, server, limit=5, concurrency=1))
    # One refusal, then plain text: each image asked once more at most, not every time.
    assert (server.refused, server.requests) == (1, 5)
    assert report.modes == {"parsed": 5} and report.flagged == 0


def test_json_off_the_schema_is_parsed_as_text(sample_root, tmp_path):
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer(["off-schema"], accepts_schema=True) as server:
        report = annotate_dataset(config(sample_root, out, server, limit=3, concurrency=1))
    assert server.refused == 0 and report.modes == {"structured": 2, "parsed": 1} and report.flagged == 0
    off_schema, *structured = records_in(out)
    assert [off_schema[key] for key in ("mode", "key_elements", "reasoning")] == ["parsed", "a face", "the mouth"]
    assert all(r["mode"] == "structured" and r["key_elements"].startswith("- a round face\n- a #") for r in structured)


def test_retry_flagged_asks_again_for_flagged_records_only(sample_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer(["no sections", "leak"]) as server:
        argv = cli_args(sample_root, out, server, "--limit", "6", "--concurrency", "1")
        assert run_cli(argv, monkeypatch, capsys)[0] == 0
        before = out.read_text().splitlines()
        flagged = [json.loads(line)["image"] for line in before if json.loads(line)["flags"]]
        assert len(flagged) == 2 and server.requests == 6

        code, printed, _ = run_cli([*argv, "--retry-flagged"], monkeypatch, capsys)
        assert code == 0 and server.requests == 8
        assert "2 flagged record(s) asked again" in printed and "2 record(s) written (0 flagged)" in printed
        after = out.read_text().splitlines()
        # Same images in the same order; the good records are the very same lines.
        assert [json.loads(line)["image"] for line in after] == [json.loads(line)["image"] for line in before]
        assert [line for line in after if line in before] == [
            line for line in before if json.loads(line)["image"] not in flagged
        ]
        assert not any(json.loads(line)["flags"] for line in after)

        assert run_cli([*argv, "--retry-flagged"], monkeypatch, capsys)[0] == 0
        assert server.requests == 8  # nothing flagged is left, so nothing is asked


def test_a_retry_that_fails_keeps_the_flagged_record(sample_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer(["no sections"]) as server:
        argv = cli_args(sample_root, out, server, "--limit", "3", "--concurrency", "1")
        run_cli(argv, monkeypatch, capsys)
        before = out.read_bytes()
        server.script = ["413"]  # the endpoint now refuses that image
        code, _, errors = run_cli([*argv, "--retry-flagged"], monkeypatch, capsys)
    assert code == 1 and "too large" in errors
    assert out.read_bytes() == before


def test_a_retry_cut_short_is_not_asked_again_and_the_file_is_compacted(sample_root, tmp_path):
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer(["no sections"]) as server:
        annotate_dataset(config(sample_root, out, server, limit=3, concurrency=1))
        first, *others = records_in(out)
        # A retry killed after its answer was appended, before the file was rewritten.
        fixed = {**first, "key_elements": "a face", "reasoning": "the mouth", "flags": []}
        with open(out, "a") as file:
            file.write(json.dumps(fixed) + "\n")
        report = annotate_dataset(config(sample_root, out, server, limit=3, retry_flagged=True))
        assert server.requests == 3 and report.retried == 0
    assert records_in(out) == [fixed, *others]


def test_check_counts_flags_of_the_out_file_without_a_request(sample_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "annotations.jsonl"
    with FakeChatServer(["no sections", "leak", "off-schema"], accepts_schema=True) as server:
        argv = cli_args(sample_root, out, server, "--limit", "5", "--concurrency", "1")
        run_cli(argv, monkeypatch, capsys)
        code, printed, _ = run_cli([*argv, "--check"], monkeypatch, capsys)
        assert code == 0 and server.requests == 5
    assert "5 records (emotion6), 3 usable for training, 2 flagged" in printed
    assert "missing key_elements  1" in printed and "names the true label  1" in printed
    assert "answers: 2 structured (JSON schema), 3 parsed from text" in printed
    code, _, errors = run_cli(["annotate", "--check"], monkeypatch, capsys)
    assert code == 2 and "--check needs the annotation file" in errors
