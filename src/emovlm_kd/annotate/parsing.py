"""Split a model's answer into its two sections, however the model chose to format them.

Models number the headings, bold them, make them markdown headers, change their case,
answer in JSON, or put a polite sentence first. Anything before the first heading is
dropped; a missing section comes back empty (and the record is flagged, not guessed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_SECTION_NAMES = {
    "key_elements": r"key\s+(?:visual\s+)?elements?",
    "reasoning": r"(?:emotional\s+)?reasoning(?:\s+process)?",
}
_NAME = "|".join(f"(?P<{section}>{pattern})" for section, pattern in _SECTION_NAMES.items())

# One heading line: '## 1. **Key Elements:** a dog', 'REASONING', '2) Reasoning - ...'.
_HEADING = re.compile(
    rf"""^\s*
    (?P<hashes>\#{{1,6}}\s*)?
    (?:(?:step\s*)?\(?\d{{1,2}}[.):]\s*|[-•]\s+)?   # numbering or a bullet
    (?P<bold>[*_]{{1,3}})?\s*
    (?:{_NAME})
    \s*[*_]{{0,3}}
    \s*(?P<separator>[:：\-–—])?
    \s*[*_]{{0,3}}\s*
    (?P<rest>.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
# 'Reasoning:' inside a line, for answers that put both sections in one paragraph.
_INLINE_REASONING = re.compile(rf"(?:^|(?<=[.!?*\s]))\**\s*{_SECTION_NAMES['reasoning']}\s*\**\s*:", re.IGNORECASE)
_CODE_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n(.*?)\n\s*```\s*$", re.DOTALL)
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$")


@dataclass(frozen=True)
class ParsedAnswer:
    key_elements: str
    reasoning: str


def parse_answer(text: str) -> ParsedAnswer:
    """The key-elements and reasoning sections of `text` ('' for a section not found)."""
    return _from_json(text) or _from_headings(text)


def _from_headings(text: str) -> ParsedAnswer:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match and _is_heading(match):
            section = "key_elements" if match["key_elements"] else "reasoning"
            # A section named twice keeps its first text; the repeat is read into it.
            current = sections.setdefault(section, [])
            if match["rest"].strip():
                current.append(match["rest"])
        elif current is not None:
            current.append(line)
    key_elements = _clean(sections.get("key_elements", []))
    reasoning = _clean(sections.get("reasoning", []))
    if key_elements and not reasoning:
        split = _INLINE_REASONING.search(key_elements)
        if split and split.start() > 0:
            key_elements, reasoning = key_elements[: split.start()].strip(), key_elements[split.end() :].strip()
    return ParsedAnswer(key_elements, reasoning)


def _is_heading(match: re.Match) -> bool:
    # 'Reasoning about the light, ...' is prose; a heading is decorated, followed by a
    # separator, or alone on its line.
    return bool(match["hashes"] or match["bold"] or match["separator"] or not match["rest"].strip())


def _clean(lines: list[str]) -> str:
    while lines and (not lines[-1].strip() or _RULE.match(lines[-1])):
        lines = lines[:-1]
    return "\n".join(lines).strip().strip("*_").strip()


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
        for section, pattern in _SECTION_NAMES.items():
            if re.fullmatch(pattern, name, re.IGNORECASE):
                found.setdefault(section, _json_text(value))
    if not found:
        return None
    return ParsedAnswer(found.get("key_elements", ""), found.get("reasoning", ""))


def _json_text(value) -> str:
    if isinstance(value, list):
        return "\n".join(f"- {_json_text(item)}" for item in value)
    return "" if value is None else str(value).strip()
