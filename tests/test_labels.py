import pytest

from emovlm_kd.errors import UserError
from emovlm_kd.labels import (
    EMOTION6,
    MIKELS8,
    MIKELS_TO_SENTIMENT,
    SENTIMENT2,
    get_taxonomy,
    guess_taxonomy,
)


def test_canonical_orders_are_fixed():
    assert MIKELS8.labels == ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
    assert EMOTION6.labels == ("anger", "disgust", "fear", "joy", "sadness", "surprise")
    assert SENTIMENT2.labels == ("positive", "negative")
    assert get_taxonomy("Mikels8") is MIKELS8


def test_mikels_to_sentiment_splits_four_and_four():
    assert set(MIKELS_TO_SENTIMENT) == set(MIKELS8.labels)
    positive = [label for label, side in MIKELS_TO_SENTIMENT.items() if side == "positive"]
    assert positive == ["amusement", "awe", "contentment", "excitement"]
    assert set(MIKELS_TO_SENTIMENT.values()) == set(SENTIMENT2.labels)


@pytest.mark.parametrize(
    "taxonomy, name, label",
    [
        (MIKELS8, "Sad", "sadness"),
        (MIKELS8, "content", "contentment"),
        (MIKELS8, "Amused", "amusement"),
        (MIKELS8, "fearful", "fear"),
        (MIKELS8, "EXCITEMENT", "excitement"),
        (MIKELS8, "angers", "anger"),
        (EMOTION6, "happy", "joy"),
        (EMOTION6, "Happiness", "joy"),
        (EMOTION6, "surprised", "surprise"),
        (EMOTION6, "disgusted", "disgust"),
        (SENTIMENT2, "Positives", "positive"),
        (SENTIMENT2, "neg", "negative"),
    ],
)
def test_names_from_the_wild_normalise(taxonomy, name, label):
    assert taxonomy.normalise(name) == label


def test_unknown_names_are_listed_with_the_accepted_ones():
    with pytest.raises(UserError) as error:
        EMOTION6.normalise_all(["joy", "awe", "blorp"])
    message = str(error.value)
    assert "'awe'" in message and "'blorp'" in message
    assert "anger, disgust, fear, joy, sadness, surprise" in message
    assert "'joy'" not in message


def test_a_label_of_another_taxonomy_is_refused():
    with pytest.raises(UserError):
        MIKELS8.normalise("joy")


def test_guess_taxonomy_picks_the_first_that_fits():
    assert guess_taxonomy(["sad", "Happy", "surprised"]) is EMOTION6
    assert guess_taxonomy(["awe", "sadness"]) is MIKELS8
    assert guess_taxonomy(["pos", "neg"]) is SENTIMENT2
    with pytest.raises(UserError):
        guess_taxonomy(["cats", "dogs"])
