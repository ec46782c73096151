"""The one shared state the I2CR graph passes between its nodes.

``InputState`` is what a caller gives, ``OutputState`` what the graph returns;
``State`` adds the bookkeeping of rounds and attempts. ``trace`` is appended to
(a LangGraph reducer): a node returns only its new entries
(``graph/progress.py``: ``record``). Rounds are numbered from
1: round 1 is the text round, round ``n`` > 1 the (n-1)-th visual-clue round.

Every field carries its description as ``Annotated[..., Field(description=...)]``:
that is what the JSON schemas served by ``langgraph dev`` (and shown as forms in
LangGraph Studio) pick up; a docstring under a field would be lost.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from pydantic import Field
from typing_extensions import NotRequired, Required, TypedDict


def doc(text: str) -> Any:
    """The description of a state field, in the form LangGraph's JSON schemas read."""
    return Field(description=text)


class Candidate(TypedDict, total=False):
    """A knowledge-base entity: ``name`` is required, ``qid`` and ``desc`` are optional."""

    qid: Annotated[str, doc("Wikidata id, e.g. 'Q41421'.")]
    name: Required[Annotated[str, doc("Entity name (required).")]]
    desc: Annotated[str, doc("Short description of the entity.")]
    score: Annotated[float, doc("Retrieval score, when the candidate came from the knowledge base.")]
    aliases: Annotated[list[str], doc("Other names of the entity.")]
    image: Annotated[str, doc("Path or URL of an image of the entity.")]


class InputState(TypedDict, total=False):
    """What a caller gives the graph."""

    mention: Required[Annotated[str, doc('The surface form to link, e.g. "Jordan".')]]
    context: Annotated[str, doc("The text around the mention (a sentence, a caption); may be empty.")]
    image: Annotated[str | None, doc("Path of the image that goes with the text, if any.")]
    candidates: Annotated[list[Candidate] | None, doc(
        "Candidate entities ({qid?, name, desc?} or plain names); when absent, "
        "they are retrieved from the knowledge base.")]
    image_desc: Annotated[dict[str, Any] | None, doc(
        "Precomputed image descriptions (e.g. WikiMEL's mention_imgdesc_Azure), used as clues.")]
    id: Annotated[str | None, doc("A caller's id for the input, echoed in the output.")]


class OutputState(TypedDict, total=False):
    """What the graph returns (besides the input fields)."""

    entity: Annotated[Candidate | None, doc("The linked entity {qid, name, desc}, or null for nil.")]
    status: Annotated[str, doc(
        "text_verified | clue_verified:<clue> | text_only (no image) | fallback (no round verified) "
        "| reviewed (a person decided) | nil.")]
    stop_round: Annotated[int, doc("Round the graph stopped at (1 = text round, n > 1 = clue round n-1).")]
    trace: Annotated[list[dict[str, Any]], doc(
        "Every step in order: retrieval, each linker attempt (pick), each reflection (score, threshold), "
        "each verification (score, threshold, scorer), each clue, the final answer."), operator.add]
    clues: Annotated[list[dict[str, Any]], doc("Visual clues gathered, in order (type, text, source, details).")]
    usage: Annotated[dict[str, Any], doc("LLM calls and input/output tokens spent on this input.")]
    round1_entity: Annotated[Candidate | None, doc("The text round's answer (the reference fallback).")]
    warnings: Annotated[list[str], doc(
        "What was degraded, each naming the image: an image that could not be used (dropped at the entry, "
        "the mention linked on its text), a clue tool or verifier that failed on it (skipped).")]


class State(InputState, OutputState, total=False):
    """Everything the nodes share."""

    candidate_source: Annotated[Literal["input", "knowledge base"], doc(
        "Where the candidates came from (the knowledge base ranks them; an input's list may be unordered).")]
    round: Annotated[int, doc("Current round (1 = text round).")]
    clue_index: Annotated[int, doc("Position in clue_order of the next clue to try.")]
    excluded: Annotated[list[str], doc("Keys of the picks rejected by reflection in the current round.")]
    attempts: Annotated[list[dict[str, Any]], doc(
        "This round's linker attempts: {key, score, outcome, raw}.")]
    answer: Annotated[Candidate | None, doc("The current round's answer after reflection (null = nil).")]
    answer_note: Annotated[str, doc("How reflection settled the current round's answer.")]
    settled: Annotated[bool, doc("Whether reflection has fixed the current round's answer.")]
    round_answers: Annotated[list[dict[str, Any]], doc(
        "Per round: {round, clue, entity, verification_score, verified, refuted (why the image rules the entity out, or null)}.")]
    has_visual: Annotated[bool, doc("Whether there is an image or an image description to verify against.")]
    verdict: Annotated[Literal["verified", "failed", "no_visual", "unverifiable"], doc(
        "Outcome of the latest verification (unverifiable: the verifier could not use the image, "
        "after round 1).")]
    round_scores: Annotated[dict[str, Any] | None, doc(
        "Fused linker: this round's distribution over the candidates {round, keys, prior, probs, gated, llm}.")]
    verification_cache: Annotated[dict[str, float], doc(
        "Verification score per candidate key (the image does not change between rounds).")]
    current_clue: NotRequired[Annotated[str | None, doc("The clue type of the current round (null in round 1).")]]
