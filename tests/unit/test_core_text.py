from __future__ import annotations

import pytest

from airies.core.text import SentenceSegmenter, contains_phrase, normalise_words, split_sentences


@pytest.mark.parametrize(
    ("text", "phrases", "found"),
    [
        ("OK, bye bye!", ["goodbye", "bye bye"], "bye bye"),
        ("Goodbye.", ["goodbye"], "goodbye"),
        ("GOODBYE", ["goodbye"], "goodbye"),
        ("goodbyes are sad", ["goodbye"], None),  # whole words only
        ("that is all_done", ["all done"], "all done"),  # the underscore is punctuation
        ("_Goodbye_, and thanks", ["goodbye"], "goodbye"),  # markdown emphasis in a model reply
        ("I’m done here", ["I'm done"], "I'm done"),  # typographic apostrophe
        ("Adiós, gracias", ["adiós"], "adiós"),  # letters of any script
        ("see you", ["", "   "], None),  # an empty phrase matches nothing
        ("hold on, bye", ["see you"], None),
    ],
)
def test_phrases_match_whole_words_ignoring_case_and_punctuation(text, phrases, found) -> None:
    assert contains_phrase(text, phrases) == found


def test_normalised_words() -> None:
    assert normalise_words("  Hello,   WORLD__again! it's\n") == "hello world again it's"


def test_sentences_split_but_not_inside_abbreviations_or_numbers() -> None:
    text = "Dr. Smith sees patients at 9.30 a.m. daily. Call us! Is that ok? Yes"
    assert split_sentences(text) == ["Dr. Smith sees patients at 9.30 a.m. daily.", "Call us!", "Is that ok?", "Yes"]
    assert split_sentences("One. Two; three: four\nfive") == ["One.", "Two;", "three:", "four", "five"]
    assert split_sentences('Ends with a quote." Next (one.) done') == ['Ends with a quote."', "Next (one.)", "done"]
    assert split_sentences("   ") == []


def test_segmenter_streams_the_first_sentence_early() -> None:
    segmenter = SentenceSegmenter(first_comma_words=6)
    assert segmenter.push("Well, thanks for calling the clinic today, how ") == [
        "Well, thanks for calling the clinic today,"
    ]
    assert segmenter.push("can I help") == []  # no boundary yet, and only the first segment cuts at a comma
    assert segmenter.push(", you said? ") == ["how can I help, you said?"]
    assert segmenter.flush() == []
    long = SentenceSegmenter(first_comma_words=0, max_chars=30)
    assert long.push("a run-on clause that goes on and on, and on ") == ["a run-on clause that goes on and on,"]
