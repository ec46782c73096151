"""The :class:`Clue` record every clue tool returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CLUE_TYPES = ("ocr", "objects", "scene", "caption")
"""The clue kinds, in the default order of the clue rounds (``Context.clue_order``)."""


@dataclass
class Clue:
    """One visual clue.

    ``type`` is ``ocr``, ``objects``, ``scene`` or ``caption``; ``text`` is what
    the linker reads (empty when the tool found nothing); ``source`` names the
    tool or model that produced it (shown in the trace); ``details`` holds the
    structured result (boxes, confidences, labels...).
    """

    type: str
    text: str
    source: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what the graph state stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Clue:
        return cls(type=data["type"], text=data.get("text", ""), source=data.get("source", ""),
                   details=dict(data.get("details") or {}))


def empty_clue(clue_type: str, reason: str) -> Clue:
    """A clue with no text, saying why."""
    return Clue(type=clue_type, text="", source="none", details={"reason": reason})
