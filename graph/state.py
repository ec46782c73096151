"""The one shared state the I2CR graph passes between its nodes.

``InputState`` is what a caller gives, ``OutputState`` what the graph returns;
``State`` adds the bookkeeping of rounds and attempts. Rounds are numbered from
1: round 1 is the text round, round ``n`` > 1 the (n-1)-th visual-clue round.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from typing_extensions import NotRequired, Required, TypedDict


class Candidate(TypedDict, total=False):
    """A knowledge-base entity: ``name`` is required, ``qid`` and ``desc`` are optional."""

    qid: str
    name: Required[str]
    desc: str
    score: float
    aliases: list[str]
    image: str


class InputState(TypedDict, total=False):
    """What a caller gives the graph."""

    mention: Required[str]
    """The surface form to link, e.g. "Jordan"."""
    context: str
    """The text around the mention (a sentence, a caption)."""
    image: Optional[str]
    """Path of the image that goes with the text, if any."""
    candidates: Optional[list[Candidate]]
    """Candidate entities; when absent, they are retrieved from the knowledge base."""
    image_desc: Optional[dict[str, Any]]
    """Precomputed image descriptions (e.g. WikiMEL's ``mention_imgdesc_Azure``), used as clues."""
    id: Optional[str]
    """A caller's id for the input, echoed in the output."""


class Attempt(TypedDict, total=False):
    """One question to the linker and what became of it (an entry of ``trace``)."""

    round: int
    clue: Optional[str]
    attempt: int
    raw: str
    pick: Optional[dict[str, str]]
    outcome: str  # "entity" | "nil" | "unparseable"
    reflection_score: Optional[float]
    reflection_passed: Optional[bool]
    verification_score: Optional[float]
    verification_passed: Optional[bool]
    scorer: Optional[str]
    note: str


class OutputState(TypedDict, total=False):
    """What the graph returns (besides the input fields)."""

    entity: Optional[Candidate]
    """The linked entity, or ``None`` for nil."""
    status: str
    """``text_verified`` | ``clue_verified:<clue>`` | ``text_only`` (no image) | ``fallback`` | ``nil``."""
    stop_round: int
    """Round the graph stopped at (1 = text round)."""
    trace: list[dict[str, Any]]
    """Every attempt: pick, reflection score, verification score, clue used."""
    clues: list[dict[str, Any]]
    """Visual clues gathered, in order (type, text, source, details)."""
    usage: dict[str, Any]
    """LLM calls and tokens spent on this input."""
    round1_entity: Optional[Candidate]
    """The text round's answer (the reference fallback)."""


class State(InputState, OutputState, total=False):
    """Everything the nodes share."""

    round: int
    clue_index: int
    """Position in ``clue_order`` of the next clue to try."""
    excluded: list[str]
    """Keys of the picks rejected by reflection in the current round."""
    attempts: list[dict[str, Any]]
    """This round's attempts: ``{"key", "score", "outcome", "raw"}``."""
    answer: Optional[Candidate]
    """The current round's answer after reflection (``None`` = nil)."""
    answer_note: str
    settled: bool
    """Whether reflection has fixed the current round's answer."""
    round_answers: list[dict[str, Any]]
    """Per round: ``{"round", "clue", "entity", "verification_score", "verified"}``."""
    has_visual: bool
    verdict: Literal["verified", "failed", "no_visual"]
    next_step: str
    """The node a conditional edge goes to next (decided by the node before it)."""
    verification_cache: dict[str, float]
    """Verification score per candidate key (the image does not change between rounds)."""
    current_clue: NotRequired[Optional[str]]
