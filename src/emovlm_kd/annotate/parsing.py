"""Split a model's answer into its two sections, however the model chose to format them.

An answer asked for with the JSON schema of `prompts.ANNOTATION_SCHEMA` is read by
`parse_structured`; any other text by `parse_answer`. Models number the headings, bold
them, make them markdown headers (in any order and combination), change their case,
answer in JSON, put a polite sentence first or name the emotion on a last line. Anything
before the first heading and any emotion section are dropped; a missing section comes
back empty (and the record is flagged, not guessed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from emovlm_kd.annotate.prompts import ANNOTATION_SCHEMA

_SECTION_NAMES = {
    "key_elements": r"key\s+(?:visual\s+)?elements?",
    "reasoning": r"(?:emotional\s+)?reasoning(?:\s+process)?",
    # Not asked for, and it would name the label: its section is read and dropped.
    "emotion": r"(?:(?:evoked|final|overall)\s+)?emotion",
}
_NAME = "|".join(f"(?P<{section}>{pattern})" for section, pattern in _SECTION_NAMES.items())
_NUMBER = r"(?:step\s*)?\(?\d{1,2}[.):]"

# One heading line: markup before the name in any order ('**1. ', '1. **', '## 2) ',
# '- '), the name, closing markup, a separator, and maybe the section's first text:
# '**1. Key Elements**', '1. **Key Elements**: a dog', '**Reasoning:** it is dark'.
_HEADING = re.compile(
    # One character or number at a time, so that no line can make the pattern backtrack.
    rf"""^(?P<lead>(?:[\s\#*_]|{_NUMBER}|[-•+](?=\s))*)
    (?:{_NAME})(?![a-z])
    (?P<close>[*_]*)
    \s*(?P<separator>[:：\-–—])?
    \s*(?P<rest>.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
# 'Reasoning:' inside a line, for answers that put both sections in one paragraph.
_INLINE_REASONING = re.compile(
    rf"(?:^|(?<=[.!?*\s]))\**\s*{_SECTION_NAMES['reasoning']}\s*\**\s*:\**", re.IGNORECASE
)
_CODE_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n(.*?)\n\s*```\s*$", re.DOTALL)
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$")
# A whole run of bold or italic markers touching text ('**' in '**Grey**'); the '*' of a
# '* ' bullet touches none.
_MARKUP = re.compile(r"(?<![*_])(?:\*+|_{2,})(?![*_\s])|(?<=[^*_\s])(?:\*+|_{2,})(?![*_])")


@dataclass(frozen=True)
class ParsedAnswer:
    key_elements: str
    reasoning: str


def parse_structured(text: str) -> ParsedAnswer | None:
    """The sections of an answer that fits `ANNOTATION_SCHEMA` exactly, else None."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or set(data) != set(ANNOTATION_SCHEMA["required"]):
        return None
    key_elements, reasoning = data["key_elements"], data["reasoning"]
    if not (isinstance(key_elements, list) and key_elements and all(map(_is_text, key_elements))):
        return None
    if not _is_text(reasoning):
        return None
    return ParsedAnswer(_json_text(key_elements), reasoning.strip())


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def parse_answer(text: str) -> ParsedAnswer:
    """The key-elements and reasoning sections of `text` ('' for a section not found)."""
    return _from_json(text) or _from_headings(text)


def _from_headings(text: str) -> ParsedAnswer:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        heading = _heading(line)
        if heading:
            section, rest = heading
            # A section named twice keeps its first text; the repeat is read into it.
            current = sections.setdefault(section, [])
            if rest:
                current.append(rest)
        elif current is not None:
            current.append(line)
    key_elements = _clean(sections.get("key_elements", []))
    reasoning = _clean(sections.get("reasoning", []))
    if key_elements and not reasoning:
        split = _INLINE_REASONING.search(key_elements)
        if split and split.start() > 0:
            key_elements, reasoning = key_elements[: split.start()].strip(), key_elements[split.end() :].strip()
    return ParsedAnswer(key_elements, reasoning)


def _heading(line: str) -> tuple[str, str] | None:
    """(section, text after the heading) when `line` is a heading, else None."""
    match = _HEADING.match(line)
    if not match:
        return None
    section = next(name for name in _SECTION_NAMES if match[name])
    markup = set(match["lead"] + match["close"]) & set("#*_")
    rest = match["rest"].strip()
    if match["close"] == "" and markup & set("*_"):
        # '**Key Elements:** a dog': the bold closes after the separator.
        rest = re.sub(r"^[*_]{1,3}\s*", "", rest)
    # 'Reasoning about the light, ...' is prose; a heading has markup, a separator, or
    # its line to itself.
    if markup or match["separator"] or not rest:
        return section, rest
    return None


def _clean(lines: list[str]) -> str:
    while lines and (not lines[-1].strip() or _RULE.match(lines[-1])):
        lines = lines[:-1]
    text = "\n".join(lines).strip()
    # A heading bolded with its text ('**Key elements: a dog**') leaves one marker without
    # its pair at an end; paired bold ('**Grey** skies') and '* ' bullets stay.
    if len(_MARKUP.findall(text)) % 2:
        text = re.sub(rf"^(?:{_MARKUP.pattern})|(?:{_MARKUP.pattern})$", "", text).strip()
    return text


def _from_json(text: str) -> ParsedAnswer | None:
    fenced = _CODE_FENCE.match(text)
    body = (fenced.group(1) if fenced else text).strip()
    if not body.startswith("{"):
        return None
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    found = {}
    for key, value in data.items():
        name = re.sub(r"[\s_-]+", " ", str(key)).strip()
        for section in ("key_elements", "reasoning"):
            if re.fullmatch(_SECTION_NAMES[section], name, re.IGNORECASE):
                found.setdefault(section, _json_text(value))
    if not found:
        return None
    return ParsedAnswer(found.get("key_elements", ""), found.get("reasoning", ""))


def _json_text(value) -> str:
    if isinstance(value, list):
        return "\n".join(f"- {_json_text(item)}" for item in value)
    return "" if value is None else str(value).strip()
