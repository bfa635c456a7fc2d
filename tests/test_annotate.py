"""Stage 0 without a server: answer parsing, the prompt, back-off, the record file, --check."""

import json
import os
import random
import time

import pytest

from emovlm_kd.annotate.backends import api_key_from_env, fit_image
from emovlm_kd.annotate.config import AnnotateConfig
from emovlm_kd.annotate.parsing import ParsedAnswer, parse_answer, parse_structured
from emovlm_kd.annotate.prompts import annotation_prompt
from emovlm_kd.annotate.records import AnnotationFile, read_records
from emovlm_kd.annotate.runner import backoff_delay
from emovlm_kd.annotate.summary import summarise_annotations
from emovlm_kd.apps.report.summaries import format_annotation_summary
from emovlm_kd.errors import UserError
from emovlm_kd.labels import EMOTION6, SENTIMENT2

KEY = "a dog on a beach"
WHY = "the open sky and the running dog suggest freedom."


@pytest.mark.parametrize(
    "answer",
    [
        f"Key elements: {KEY}\nReasoning: {WHY}",
        f"**Key elements:** {KEY}\n\n**Reasoning:** {WHY}",
        f"**Key Elements**: {KEY}\n**Reasoning**: {WHY}",
        f"1. Key elements: {KEY}\n2. Reasoning: {WHY}",
        f"1) **KEY ELEMENTS** - {KEY}\n2) **REASONING** - {WHY}",
        f"Sure! Here is my analysis.\n\n## Key Elements\n{KEY}\n\n## Reasoning\n{WHY}\n\n---",
        f"### 1. Key visual elements:\n{KEY}\n### 2. Emotional reasoning:\n{WHY}",
        f"key elements\n{KEY}\n\nreasoning\n{WHY}",
        f"Key elements: {KEY}. Reasoning: {WHY}",
        f"**Key elements:** {KEY}. **Reasoning:** {WHY}",
        json.dumps({"key_elements": KEY, "reasoning": WHY}),
        "```json\n" + json.dumps({"Key Elements": KEY, "Reasoning": WHY}) + "\n```",
        # Numbering, bold and header markup in any order and combination.
        f"**1. Key Elements**\n{KEY}\n\n**2. Reasoning**\n{WHY}",
        f"**1. Key Elements:**\n{KEY}\n**2. Reasoning:** {WHY}",
        f"1. **Key Elements**:\n{KEY}\n2. **Reasoning**: {WHY}",
        f"**1.** Key elements: {KEY}\n**2.** Reasoning: {WHY}",
        f"## 1) Key Elements\n{KEY}\n## 2) Reasoning\n{WHY}",
        f"### **1. Key Elements:**\n{KEY}\n### **2. Reasoning:**\n{WHY}",
        f"## **Key Elements**\n{KEY}\n## **Reasoning**\n{WHY}",
        f"Key elements -\n{KEY}\nReasoning -\n{WHY}",
        f"Key elements — {KEY}\nReasoning — {WHY}",
        f"- **Key elements:** {KEY}\n- **Reasoning:** {WHY}",
        f"__Key elements__: {KEY}\n__Reasoning__: {WHY}",
        f"*Key elements*: {KEY}\n*Reasoning*: {WHY}",
        f"(1) Key elements: {KEY}\n(2) Reasoning: {WHY}",
        f"Step 1: Key elements\n{KEY}\nStep 2: Reasoning\n{WHY}",
        f"Key Elements:\n\n{KEY}\n\nReasoning:\n\n{WHY}\n",
        # A last line that names the emotion is dropped, whatever its markup.
        f"Key elements: {KEY}\nReasoning: {WHY}\n\nEmotion: joy",
        f"**Key Elements**: {KEY}\n**Reasoning**: {WHY}\n**Emotion**: Joy",
        f"**1. Key Elements**\n{KEY}\n**2. Reasoning**\n{WHY}\n**3. Emotion**\nJoy",
        f"### Key Elements\n{KEY}\n### Reasoning\n{WHY}\n### Evoked emotion\nJoy",
        f"KEY ELEMENTS\n{KEY}\nREASONING\n{WHY}\nFINAL EMOTION: JOY",
        f"Key elements - {KEY}\nReasoning - {WHY}\nEmotion - joy",
    ],
)
def test_both_sections_are_found_in_any_common_format(answer):
    parsed = parse_answer(answer)
    assert parsed.key_elements.rstrip(".") == KEY
    assert parsed.reasoning == WHY


def test_lists_stay_intact_and_prose_is_not_mistaken_for_a_heading():
    answer = (
        "**Key elements:**\n- a grey sky\n- reasoning about the light is hard\n\n"
        "**Reasoning:**\nReasoning from the sky, the scene feels heavy.\nEmotional weight comes from the grey."
        "\nEmotion runs through the empty bench.\nIt is quiet."
    )
    parsed = parse_answer(answer)
    assert parsed.key_elements == "- a grey sky\n- reasoning about the light is hard"
    assert parsed.reasoning == (
        "Reasoning from the sky, the scene feels heavy.\nEmotional weight comes from the grey."
        "\nEmotion runs through the empty bench.\nIt is quiet."
    )
    starred = parse_answer("### Key Elements\n* a grey sky\n* an empty bench\n### Reasoning\n**Grey** skies weigh.")
    assert starred == ParsedAnswer("* a grey sky\n* an empty bench", "**Grey** skies weigh.")


def test_long_runs_of_markup_are_parsed_at_once():
    # A pattern that can split '****' in many ways takes hours on such lines.
    for line in ("*" * 5000 + " x", "#" * 5000, " " * 5000 + "x", "1." * 2000 + "x"):
        started = time.perf_counter()
        assert parse_answer(f"{line}\nKey elements: {KEY}\n{line}\nReasoning: {WHY}").key_elements
        assert time.perf_counter() - started < 1.0


def test_an_answer_fitting_the_schema_is_read_as_is():
    answer = json.dumps({"key_elements": ["a dog", "a beach"], "reasoning": WHY})
    assert parse_structured(answer) == ParsedAnswer("- a dog\n- a beach", WHY)


@pytest.mark.parametrize(
    "answer",
    [
        f"Key elements: {KEY}\nReasoning: {WHY}",
        "```json\n" + json.dumps({"key_elements": [KEY], "reasoning": WHY}) + "\n```",
        json.dumps({"key_elements": KEY, "reasoning": WHY}),
        json.dumps({"key_elements": [], "reasoning": WHY}),
        json.dumps({"key_elements": [KEY, " "], "reasoning": WHY}),
        json.dumps({"key_elements": [KEY], "reasoning": ""}),
        json.dumps({"key_elements": [KEY]}),
        json.dumps({"key_elements": [KEY], "reasoning": WHY, "emotion": "joy"}),
        json.dumps([KEY, WHY]),
    ],
)
def test_an_answer_off_the_schema_is_left_to_the_text_parser(answer):
    assert parse_structured(answer) is None


@pytest.mark.parametrize(
    ("answer", "key_elements", "reasoning"),
    [
        ("I cannot describe this image.", "", ""),
        ("Key elements: a storm", "a storm", ""),
        ("Reasoning: it is dark", "", "it is dark"),
        (json.dumps({"caption": "a cat"}), "", ""),
    ],
)
def test_missing_sections_come_back_empty(answer, key_elements, reasoning):
    assert parse_answer(answer) == ParsedAnswer(key_elements, reasoning)


def test_the_prompt_lists_the_datasets_own_taxonomy_and_the_label():
    prompt = annotation_prompt("joy", EMOTION6)
    assert "anger, disgust, fear, joy, sadness, surprise" in prompt
    assert 'label is "joy"' in prompt
    assert "amusement" not in prompt  # not Mikels' 8 for every dataset
    assert "Never write the word \"joy\"" in prompt
    assert "positive, negative" in annotation_prompt("negative", SENTIMENT2)


def test_backoff_is_exponential_capped_jittered_and_seeded():
    config = AnnotateConfig(retry_base_delay=1.0, retry_max_delay=10.0)
    delays = [backoff_delay(attempt, config, random.Random("42:a.jpg")) for attempt in range(6)]
    assert delays == [backoff_delay(attempt, config, random.Random("42:a.jpg")) for attempt in range(6)]
    for attempt, delay in enumerate(delays):
        ceiling = min(10.0, 2.0**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(0, config, random.Random(0), retry_after=4.0) == 4.0
    assert backoff_delay(0, config, random.Random(0), retry_after=3600.0) == 10.0


def test_images_are_downscaled_to_the_longest_side():
    from PIL import Image

    assert fit_image(Image.new("RGB", (4000, 1000)), 1024).size == (1024, 256)
    assert fit_image(Image.new("RGB", (300, 200)), 1024).size == (300, 200)


def _record(image, label="joy", key="a smile", why="bright colours", flags=()):
    return {"image": image, "label": label, "key_elements": key, "reasoning": why, "raw": "", "model": "m",
            "flags": list(flags)}


def _lines(records):
    return "".join(json.dumps(record) + "\n" for record in records).encode()


@pytest.mark.parametrize("tail", [b'{"image": "c.png", "label": "jo', b"\0\0\0\0\0\0", b'{"image": "c.png"\n'])
def test_a_torn_last_line_is_cut_and_never_duplicated(tmp_path, tail):
    path = tmp_path / "out.jsonl"
    path.write_bytes(_lines([_record("a.png"), _record("b.png")]) + tail)
    assert read_records(path).torn_tail == tail
    with AnnotationFile(path) as out:
        assert out.done == {"a.png", "b.png"}
        out.append(_record("c.png"))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == ["a.png", "b.png", "c.png"]


def test_a_complete_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(_lines([_record("a.png")]) + json.dumps(_record("b.png")).encode())
    with AnnotationFile(path) as out:
        out.append(_record("c.png"))
    assert [json.loads(line)["image"] for line in path.read_text().splitlines()] == ["a.png", "b.png", "c.png"]


def test_foreign_or_damaged_files_are_refused_and_left_untouched(tmp_path):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("shopping list\n")
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(_lines([_record("a.png")]) + b"{oops\n" + _lines([_record("b.png")]))
    for path, message in ((foreign, "line 1"), (damaged, "line 2")):
        before = path.read_bytes()
        with pytest.raises(UserError, match=message):
            AnnotationFile(path).__enter__()
        assert path.read_bytes() == before


def test_two_runs_cannot_append_to_one_file(tmp_path):
    path = tmp_path / "out.jsonl"
    with AnnotationFile(path):
        with pytest.raises(UserError, match="another `emovlm-kd annotate`"):
            AnnotationFile(path).__enter__()
    with AnnotationFile(path):  # released when the first run ends
        pass


def test_appended_records_are_on_disk_at_once(tmp_path):
    path = tmp_path / "out.jsonl"
    with AnnotationFile(path) as out:
        out.append(_record("a.png"))
        # Another reader sees the whole line before the file is closed.
        assert json.loads(path.read_text())["image"] == "a.png"


def test_keep_newest_rewrites_one_record_per_image_and_keeps_the_lock(tmp_path):
    path = tmp_path / "out.jsonl"
    with AnnotationFile(path) as out:
        for record in (_record("a.png", key=""), _record("b.png"), _record("c.png", why=""), _record("a.png")):
            out.append(record)
        out.append(_record("c.png", why="a fixed answer"))
        out.keep_newest()
        with pytest.raises(UserError, match="another `emovlm-kd annotate`"):
            AnnotationFile(path).__enter__()
        out.append(_record("d.png"))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    # Each image keeps its place, with its newest record.
    assert [(r["image"], r["key_elements"], r["reasoning"]) for r in records] == [
        ("a.png", "a smile", "bright colours"), ("b.png", "a smile", "bright colours"),
        ("c.png", "a smile", "a fixed answer"), ("d.png", "a smile", "bright colours"),
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_a_failed_rewrite_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = _write(tmp_path / "out.jsonl", [_record("a.png", key=""), _record("a.png")])
    before = path.read_bytes()

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with AnnotationFile(path) as out:
        with pytest.raises(UserError, match="cannot rewrite .* left as it was"):
            out.keep_newest()
        out.append(_record("b.png"))  # still appending to the file it opened
    assert path.read_bytes() == before + _lines([_record("b.png")])
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_check_counts_records_flags_and_labels(tmp_path):
    path = tmp_path / "out.jsonl"
    records = [
        _record("a.png"),
        _record("b.png", key="", why="fine"),
        _record("c.png", label="sadness", why="it looks sad"),
        _record("d.png", label="fear", flags=["answer cut at max_tokens"]),
        _record("a.png"),
    ]
    path.write_bytes(_lines(records) + b'{"image": "e.p')
    summary = summarise_annotations(path)
    assert summary.taxonomy.name == "emotion6"
    assert (summary.records, summary.usable, summary.flagged, summary.duplicates) == (5, 2, 3, 1)
    assert summary.by_reason == {"missing key_elements": 1, "names the true label": 1, "answer cut at max_tokens": 1}
    assert summary.by_label["joy"] == [3, 1] and summary.by_label["sadness"] == [1, 1]
    text = format_annotation_summary(summary)
    assert "5 records (emotion6), 2 usable for training, 3 flagged" in text
    assert "names the true label" in text and "cut short" in text and "repeat an image" in text


def test_check_refuses_what_is_not_an_annotation_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        summarise_annotations(tmp_path / "missing.jsonl")
    png = tmp_path / "image.jsonl"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    with pytest.raises(UserError):
        summarise_annotations(png)
    listing = tmp_path / "list.jsonl"
    listing.write_text('["a.png", "joy"]\n')
    with pytest.raises(UserError, match="line 1"):
        summarise_annotations(listing)
    with pytest.raises(UserError, match="unknown taxonomy"):
        summarise_annotations(_write(tmp_path / "ok.jsonl", [_record("a.png")]), taxonomy="plutchik")


def _write(path, records):
    path.write_bytes(_lines(records))
    return path


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(UserError, match="--base-url"):
        AnnotateConfig(data="d", out="o.jsonl", model="m").validate()
    with pytest.raises(UserError, match="--concurrency"):
        AnnotateConfig(data="d", out="o.jsonl", model="m", base_url="http://x/v1", concurrency=0).validate()
    AnnotateConfig(data="d", out="o.jsonl", model="tiny", backend="local").validate()


def test_the_api_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("EMOVLM_TEST_KEY", "secret")
    assert api_key_from_env("EMOVLM_TEST_KEY") == "secret"
    monkeypatch.delenv("EMOVLM_TEST_KEY")
    with pytest.raises(UserError, match="EMOVLM_TEST_KEY .* is not set"):
        api_key_from_env("EMOVLM_TEST_KEY")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert api_key_from_env(None)  # a server that wants no key still gets a placeholder
