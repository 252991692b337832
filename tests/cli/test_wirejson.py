"""The CLI's JSON (on the interpreter's C codec, without the json package) reads and writes what
json does, and refuses what json refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from coracle.cli import wirejson

DOCUMENTS: list[Any] = [
    {"Id": "abc", "Warnings": [], "StatusCode": 0, "Error": None, "Ok": True, "Size": 1.5e300},
    {"stream": "Step 1/2 : RUN echo \"é\" \\ \n\t", "aux": {"ID": "sha256:" + "0" * 64}},
    [1, -2, 3.25, "", {}, [[]]], "plain", 0, None,
]


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_same_text_both_ways(doc: Any) -> None:
    assert wirejson.dumps(doc) == json.dumps(doc)
    assert wirejson.dumps(doc, compact=True) == json.dumps(doc, separators=(",", ":"))
    assert wirejson.loads(json.dumps(doc)) == doc
    assert wirejson.loads(b"  " + json.dumps(doc).encode() + b"\r\n") == doc


@pytest.mark.parametrize("text", ["", "   ", "{", '{"a": 1} {"b": 2}', "nope", '{"a": 1,}'])
def test_what_json_refuses_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        wirejson.loads(text)


def test_unserializable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        wirejson.dumps({"when": object()})
