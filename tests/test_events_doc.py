"""docs/events.md shows every event type exactly as it is on the wire, and cannot drift.

Every ```json block of the page is one wire example: a single line that ``decode_event`` reads
and ``encode_event`` writes back byte for byte, and there is exactly one per event type.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import get_args

import pytest

from runner_core.events import EventType, decode_event, encode_event

DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def json_blocks(text: str) -> list[tuple[int, str]]:
    """The body of every ```json block, with the line number of its opening fence."""
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        if lines[index].strip() != "```json":
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        blocks.append((index + 1, "\n".join(lines[index + 1 : end])))
        index = end + 1
    return blocks


EXAMPLES = json_blocks(DOC.read_text(encoding="utf-8"))


def test_blocks_are_found_with_their_line() -> None:
    text = 'intro\n```json\n{"a":1}\n```\n```sh\necho\n```\n\n```json\n{"b":2}\n```\n'

    assert json_blocks(text) == [(2, '{"a":1}'), (9, '{"b":2}')]


@pytest.mark.parametrize("line, example", EXAMPLES, ids=[f"events.md:{n}" for n, _ in EXAMPLES])
def test_the_example_is_one_event_exactly_as_encoded(line: int, example: str) -> None:
    # Given one example of the page: a single line of JSON
    assert "\n" not in example, f"events.md:{line}: a wire example is one line"

    # When it is decoded and encoded again
    event = decode_event(example)

    # Then it is the current wire form (not the flat shape of earlier versions), byte for byte
    assert encode_event(event) == example
    assert "partial" not in json.loads(example)


def test_there_is_exactly_one_example_per_event_type() -> None:
    types = Counter(decode_event(example).type for _, example in EXAMPLES)

    assert set(types) == set(get_args(EventType))
    assert [kind for kind, count in types.items() if count > 1] == []
