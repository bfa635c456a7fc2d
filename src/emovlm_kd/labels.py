"""Emotion taxonomies with a fixed canonical order, and normalisation of names seen in the wild."""

from __future__ import annotations

from dataclasses import dataclass

from emovlm_kd.errors import UserError


@dataclass(frozen=True)
class Taxonomy:
    """A named, ordered set of emotion labels; a label's index is its class id everywhere."""

    name: str
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        return self.labels.index(self.normalise(label))

    def normalise(self, name: str) -> str:
        """Map a folder or manifest name ('Sad', 'contents', 'happy') to a canonical label."""
        label = _canonical(name, self)
        if label is None:
            raise UserError(
                f"unknown class name {name!r} for taxonomy {self.name}; "
                f"accepted names: {', '.join(self.labels)}."
            )
        return label

    def normalise_all(self, names: list[str]) -> dict[str, str]:
        """Normalise many names at once, naming every unknown one in a single error."""
        mapping = {name: _canonical(name, self) for name in names}
        unknown = sorted(name for name, label in mapping.items() if label is None)
        if unknown:
            raise UserError(
                f"unknown class name(s) {', '.join(repr(n) for n in unknown)} for taxonomy "
                f"{self.name}; accepted names: {', '.join(self.labels)} "
                "(rename the folders or pick another taxonomy with --taxonomy)."
            )
        return mapping  # type: ignore[return-value]


MIKELS8 = Taxonomy(
    "mikels8",
    ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"),
)
EMOTION6 = Taxonomy("emotion6", ("anger", "disgust", "fear", "joy", "sadness", "surprise"))
SENTIMENT2 = Taxonomy("sentiment2", ("positive", "negative"))

TAXONOMIES: dict[str, Taxonomy] = {t.name: t for t in (MIKELS8, EMOTION6, SENTIMENT2)}

# Mikels' four positive and four negative categories.
MIKELS_TO_SENTIMENT: dict[str, str] = {
    "amusement": "positive",
    "awe": "positive",
    "contentment": "positive",
    "excitement": "positive",
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sadness": "negative",
}

# Spellings found in published datasets and user folders, after lower-casing and with
# '-', ' ' and '_' removed. Each maps to one canonical label; the taxonomy decides
# whether that label is valid for it.
_ALIASES: dict[str, tuple[str, ...]] = {
    "amusement": ("amused", "amusing", "amuse", "fun", "funny"),
    "awe": ("awed", "awesome", "amazement"),
    "contentment": ("content", "contented", "contentness", "calm", "serene", "serenity"),
    "excitement": ("excited", "exciting", "excite"),
    "anger": ("angry", "anger", "mad", "rage", "angered"),
    "disgust": ("disgusted", "disgusting", "disgust"),
    "fear": ("fearful", "afraid", "scared", "scary", "fear", "feared"),
    "sadness": ("sad", "sadden", "saddened", "unhappy", "sorrow"),
    "joy": ("happy", "happiness", "joyful", "joyous", "joy"),
    "surprise": ("surprised", "surprising", "surprize"),
    "positive": ("pos", "positive", "positives"),
    "negative": ("neg", "negative", "negatives"),
}
_ALIAS_TO_LABEL = {alias: label for label, aliases in _ALIASES.items() for alias in aliases}


def _key(name: str) -> str:
    return "".join(ch for ch in name.strip().lower() if ch not in " -_")


def _canonical(name: str, taxonomy: Taxonomy) -> str | None:
    key = _key(name)
    candidates = [key]
    if key.endswith("es"):
        candidates.append(key[:-2])
    if key.endswith("s"):
        candidates.append(key[:-1])
    for candidate in candidates:
        label = candidate if candidate in taxonomy.labels else _ALIAS_TO_LABEL.get(candidate)
        if label in taxonomy.labels:
            return label
    return None


def get_taxonomy(name: str) -> Taxonomy:
    """Look a taxonomy up by name ('mikels8', 'emotion6', 'sentiment2')."""
    try:
        return TAXONOMIES[name.strip().lower()]
    except KeyError:
        raise UserError(
            f"unknown taxonomy {name!r}; choose one of: {', '.join(TAXONOMIES)}."
        ) from None


def guess_taxonomy(names: list[str]) -> Taxonomy:
    """The first taxonomy (mikels8, emotion6, sentiment2) that accepts every name."""
    for taxonomy in TAXONOMIES.values():
        if all(_canonical(name, taxonomy) is not None for name in names):
            return taxonomy
    raise UserError(
        f"class names {', '.join(repr(n) for n in sorted(names))} fit none of the taxonomies "
        f"({', '.join(TAXONOMIES)}); rename the folders or pass --taxonomy to see which names are wrong."
    )
