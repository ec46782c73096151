"""``linker_mode='llm'``, the reference loop: the linker model picks one candidate (or nil) per attempt.

The mention, its context and the visual clues go into a numbered list of the
candidates reflection has not ruled out this round (small models answer a
number they were told to avoid, so ruled-out picks leave the list and are
named at the end of the prompt); the answer is read leniently
(``tools/answers.py``). Reflection on the pick is ``tools/reflection.py``.
The fused mode (the default) is ``tools/fused_linker.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from prompts import linking as P
from tools.answers import parse_answer
from tools.candidates import candidate_key
from tools.models import invoke_model
from tools.names import display_name
from tools.prompt_text import candidate_desc, clue_block


@dataclass
class LLMPick:
    """One attempt: ``outcome`` ``entity`` (``pick``), ``nil`` or ``unparseable``; the raw answer and its tokens."""

    outcome: str
    pick: dict | None
    raw: str
    tokens: dict[str, int]
    note: str = ""


def shown_candidates(candidates: list[dict], excluded: list[str]) -> list[dict]:
    """The candidates offered in this attempt: all but those reflection ruled out this round."""
    ruled_out = set(excluded)
    return [c for c in candidates if candidate_key(c) not in ruled_out]


def llm_messages(mention: str, context: str, candidates: list[dict], excluded: list[str], clues: list[dict], *,
                 retry_raw: str | None, max_desc_chars: int, allow_nil: bool) -> list:
    """The chat messages of one attempt; ``retry_raw`` is the previous answer when it could not be used."""
    shown = shown_candidates(candidates, excluded)
    lines = [P.CANDIDATE_LINE.format(number=i + 1, name=display_name(c["name"]), desc=candidate_desc(c, max_desc_chars))
             for i, c in enumerate(shown)]
    by_key = {candidate_key(c): c for c in candidates}
    names = [by_key[k]["name"] for k in excluded if k in by_key]
    rejected = P.REJECTED.format(names="; ".join(names)) if names else ""
    retry = P.RETRY.format(raw=retry_raw[:80]) if retry_raw is not None else ""
    user = P.USER.format(candidates="\n".join(lines), mention=mention, context=context or "(none)",
                         clues=clue_block(clues), rejected=rejected, retry=retry,
                         answer_format=P.ANSWER_FORMAT_NIL if allow_nil else P.ANSWER_FORMAT)
    return [SystemMessage(P.SYSTEM_NIL if allow_nil else P.SYSTEM), HumanMessage(user)]


def llm_pick(model: BaseChatModel, mention: str, context: str, candidates: list[dict], excluded: list[str],
             clues: list[dict], *, retry_raw: str | None = None, spec: Any = None, max_desc_chars: int = 300,
             allow_nil: bool = True) -> LLMPick:
    """Ask ``model`` once (``spec`` names it in errors) and map its answer to a shown candidate, nil or unusable."""
    messages = llm_messages(mention, context, candidates, excluded, clues, retry_raw=retry_raw,
                            max_desc_chars=max_desc_chars, allow_nil=allow_nil)
    raw, tokens = invoke_model(model, messages, spec=spec if spec is not None else model)
    shown = shown_candidates(candidates, excluded)
    answer = parse_answer(raw, [display_name(c["name"]) for c in shown], qids=[c.get("qid") for c in shown],
                          allow_nil=allow_nil)
    pick = shown[answer.index] if answer.kind == "entity" else None
    note = ("answer could not be mapped to an offered candidate: counted as a failed attempt"
            if answer.kind == "unparseable" else "")
    return LLMPick(answer.kind, pick, raw, tokens, note)
