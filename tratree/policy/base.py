"""What every generation backend takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GenerationRequest:
    """One reply to generate: a chat, sampling settings and a seed."""

    messages: list[dict[str, str]] = field(hash=False)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class Backend(Protocol):
    """Generates one assistant reply per request, in order."""

    max_new_tokens: int

    def generate(self, requests: list[GenerationRequest]) -> list[str]: ...

    def close(self) -> None: ...


# A reply ends at the end of its turn; models that run on write the next observation themselves.
STOP_STRINGS = ["\nObservation:"]


def cut_reply(text: str) -> str:
    """The reply up to where the model starts writing the environment's next turn."""
    for stop in STOP_STRINGS:
        i = text.find(stop)
        if i >= 0:
            text = text[:i]
    return text.strip()
