"""The ReAct reply format of the paper's agents: ``Thought: ...`` then ``Action: ...``."""

from __future__ import annotations

import re

_ACTION = re.compile(r"^\s*action\s*:\s*", re.IGNORECASE | re.MULTILINE)
_THOUGHT = re.compile(r"^\s*thought\s*:\s*", re.IGNORECASE)


def format_reply(thought: str, action: str) -> str:
    """The assistant turn for one step."""
    return f"Thought: {thought}\nAction: {action}" if thought else f"Action: {action}"


def parse_reply(text: str) -> tuple[str, str | None]:
    """Split a model reply into (thought, action); action is None when the reply names none.

    The last ``Action:`` line wins (models sometimes restate the format first); the action
    is the first non-empty line after it, so trailing chatter is dropped.
    """
    matches = list(_ACTION.finditer(text))
    if not matches:
        return _THOUGHT.sub("", text, count=1).strip(), None
    last = matches[-1]
    thought = _THOUGHT.sub("", text[: last.start()], count=1).strip()
    rest = text[last.end() :].strip()
    action = rest.splitlines()[0].strip() if rest else ""
    return thought, action or None
