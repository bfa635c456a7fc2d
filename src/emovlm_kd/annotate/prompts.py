"""The stage-0 request: show the image and its true label, ask for key elements and reasoning.

The same prompt goes with or without `ANNOTATION_SCHEMA`; the schema only fixes the form.

The categories listed are the dataset's own taxonomy (the reference listed Mikels' 8 for
every dataset). The answer must not name the label, so that the inference task teaches
the VLM to reason towards an emotion instead of copying one.
"""

from __future__ import annotations

from emovlm_kd.labels import Taxonomy

ANNOTATION_SYSTEM_PROMPT = (
    "You are an expert in visual emotion analysis. You see one image and explain, "
    "from what is visible in it, which emotion it evokes in a viewer."
)

KEY_ELEMENTS_HEADING = "Key elements"
REASONING_HEADING = "Reasoning"

# The answer's form where the endpoint takes a JSON schema (OpenAI structured outputs,
# vLLM, Ollama): the two sections and nothing else, so nothing has to be parsed.
ANNOTATION_SCHEMA = {
    "type": "object",
    "properties": {
        "key_elements": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "description": "what in the image could evoke an emotion, one short item each",
        },
        "reasoning": {
            "type": "string",
            "minLength": 1,
            "description": "how the key elements lead a viewer to the labelled emotion, without naming it",
        },
    },
    "required": ["key_elements", "reasoning"],
    "additionalProperties": False,
}


def annotation_prompt(label: str, taxonomy: Taxonomy) -> str:
    """The user message for one image whose true label is `label`."""
    return (
        f"This image comes from a dataset whose images are labelled with one of {len(taxonomy)} "
        f"emotion categories: {', '.join(taxonomy.labels)}. This image's label is \"{label}\".\n\n"
        "Answer in exactly two sections, with these headings:\n"
        f"{KEY_ELEMENTS_HEADING}: the objects, people, facial expressions, colours, lighting, "
        "composition and context in the image that could evoke an emotion, as a short list.\n"
        f"{REASONING_HEADING}: a few sentences on how those key elements lead a viewer to feel "
        "the labelled emotion.\n\n"
        f"Never write the word \"{label}\" or any form or synonym of it, and do not name any of "
        "the categories: describe and reason, but leave the emotion itself unsaid."
    )
