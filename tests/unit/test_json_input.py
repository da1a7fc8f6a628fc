"""A command payload typed as JSON: each mistake refused in one sentence
that says what was wrong with the input."""

from __future__ import annotations

import pytest

from service.json_input import JsonInputError, parse_object


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "the payload must be a JSON object ({...}), got an array"),
        ('"str"', "the payload must be a JSON object ({...}), got a string"),
        ("null", "the payload must be a JSON object ({...}), got null"),
        ("12", "the payload must be a JSON object ({...}), got a number"),
        ("true", "the payload must be a JSON object ({...}), got a boolean"),
        ('{"amount": 1, "amount": 2}', 'the payload has the key "amount" twice in one object'),
        ('{"to": {"id": 1, "id": 2}}', 'the payload has the key "id" twice in one object'),
        ('{"amount": NaN}', "the payload is not valid JSON: NaN is not a JSON value"),
        (
            "{amount: 1}",
            "the payload is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)",
        ),
        ('{"amount": 1} {}', "the payload is not valid JSON: Extra data (line 1, column 15)"),
    ],
)
def test_a_payload_that_is_not_one_json_object_is_refused_in_one_sentence(text: str, message: str) -> None:
    with pytest.raises(JsonInputError) as raised:
        parse_object(text)
    assert str(raised.value) == message


def test_an_object_is_read_as_it_is() -> None:
    assert parse_object('{"owner": "ann", "tags": {"a": [1, 2]}}') == {"owner": "ann", "tags": {"a": [1, 2]}}


def test_the_refusal_names_what_was_read() -> None:
    with pytest.raises(JsonInputError, match=r"^the metadata must be a JSON object"):
        parse_object("[]", what="the metadata")
