"""The three instruction tasks of the paper, and the classification answer format.

The classification answer is scored, never sampled: `{'emotion': '<label>'}` for each label.
"""

from __future__ import annotations

from emovlm_kd.labels import Taxonomy

OBSERVATION_PROMPT = "Describe the key elements in this image that could evoke an emotion."
INFERENCE_PROMPT = (
    "Describe how the emotion this image evokes can be inferred from its key elements."
)
# --explain asks the task the model was tuned on, then keeps its first sentence.
EXPLANATION_PROMPT = INFERENCE_PROMPT


def classification_prompt(taxonomy: Taxonomy) -> str:
    return (
        "Which emotion does this image evoke? Choose exactly one of these "
        f"{len(taxonomy)} categories: {', '.join(taxonomy.labels)}. "
        "Answer in the form {'emotion': '<category>'}."
    )


def classification_answer(label: str) -> str:
    return "{'emotion': '" + label + "'}"


def first_sentence(text: str) -> str:
    """The first sentence of a generated text (the whole text if it has no full stop)."""
    text = " ".join(text.split())
    for index, char in enumerate(text):
        if char in ".!?" and (index + 1 == len(text) or text[index + 1] == " "):
            return text[: index + 1]
    return text
