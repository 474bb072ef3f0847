"""The ReAct reply parser is robust to the replies weak models actually produce."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tratree.records.react import format_reply, parse_reply


@pytest.mark.parametrize(
    ("reply", "thought", "action"),
    [
        ("Thought: I need the knife.\nAction: take knife", "I need the knife.", "take knife"),
        ("Action: open fridge", "", "open fridge"),
        ("thought: lower case\naction:   go north  ", "lower case", "go north"),
        ("Thought: a\nAction: x\nAction: take egg\nObservation: you took", "a\nAction: x", "take egg"),
        ("Thought: no action here", "no action here", None),
        ("Thought: empty\nAction:   ", "empty", None),
        ("", "", None),
        ("Thought: multi\nline\nAction: put apple in fridge\n\nmore chatter", "multi\nline", "put apple in fridge"),
    ],
)
def test_parse_reply(reply, thought, action):
    assert parse_reply(reply) == (thought, action)


_text = st.text(st.characters(blacklist_categories=("Cs", "Zl", "Zp", "Cc")), max_size=40).map(str.strip)


@given(thought=_text.filter(lambda s: "action:" not in s.lower() and not s.lower().startswith("thought:")),
       action=_text.filter(bool))
def test_format_then_parse_round_trips(thought, action):
    assert parse_reply(format_reply(thought, action)) == (thought, action)
