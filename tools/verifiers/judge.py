"""Judge verification: a vision-capable chat model rates how well the image matches the entity.

``verifier='judge:<chat model spec>'`` (e.g. ``judge:openai:gpt-4o-mini``, or
any OpenAI-compatible vision model via ``openai_base_url``). The image goes as
a base64 ``data:`` URL in an ``image_url`` content block together with the
entity's name and description; the model is asked for one number in [0, 1].
Answers are read leniently (``0.8``, ``Score: 8/10``, ``85%``, ``**0.7**``,
``yes``/``no``); an unreadable answer is re-asked once, then it is a
``ModelError`` naming the model. Default threshold 0.5.

Without an image file the judge gets the image's precomputed description as
text instead (the same model, text-only); with neither the score is 0.0. An
image file it cannot read is an ``InputError`` naming it (the verify node
notes it and goes on); a model that does not answer is a ``ModelError``.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from tools.clues.image_io import image_data_url, image_key
from tools.errors import ModelError
from tools.texts import entity_text

SYSTEM = ("You verify entity links. Given an image (or a description of it) and a candidate entity, "
          "rate how likely it is that the image shows or is about that entity, from 0 (certainly not) "
          "to 1 (certainly). Answer with the number only.")
RETRY = "Answer with a single number between 0 and 1 only."
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)\s*(%|/\s*(?:10|100|1|5)\b)?")


def parse_score(answer: str) -> float | None:
    """A score in [0, 1] read from a free-form answer, or ``None`` when there is none.

    A decimal (``0.7``), a fraction (``8/10``) or a percentage wins over a bare
    integer elsewhere in the text ("2 people ... 0.3" reads 0.3); bare integers
    above 1 are read as out of 10 or 100.
    """
    text = re.sub(r"(\d),(\d)", r"\1.\2", str(answer or "")).strip()
    strong: list[float] = []
    weak: list[float] = []
    for match in _NUMBER.finditer(text):
        raw, unit = match.group(1), (match.group(2) or "").replace(" ", "")
        value: float | None = float(raw)
        if unit == "%":
            value /= 100.0
        elif unit.startswith("/"):
            value /= float(unit[1:])
        elif value > 1.0:
            value = value / 10.0 if value <= 10.0 else value / 100.0 if value <= 100.0 else None
        if value is None or not 0.0 <= value <= 1.0:
            continue
        (strong if unit or "." in raw else weak).append(float(value))
    if strong or weak:
        return (strong or weak)[0]
    words = re.findall(r"[a-z]+", text.lower())
    if not words or (len(words) > 1 and words[1] in ("idea", "clue", "way", "comment")):
        return None
    if words[0] in ("yes", "true", "match", "matches"):
        return 1.0
    if words[0] in ("no", "false", "mismatch"):
        return 0.0
    return None


def _text(reply: Any) -> str:
    """The answer text of ``invoke_model`` (a ``(text, usage)`` pair or a string)."""
    return reply[0] if isinstance(reply, tuple) else str(reply)


class JudgeScorer:
    """``score`` = the chat model's 0-1 rating of image vs entity."""

    default_threshold = 0.5

    def __init__(self, spec: Any):
        from tools.models import describe

        self.spec = spec
        self.name = f"judge:{describe(spec)}"
        self._cache: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def _model(self, ctx: Any):
        from tools.models import load_chat_model

        return load_chat_model(self.spec, setting="verifier", base_url=getattr(ctx, "openai_base_url", None),
                               api_key=getattr(ctx, "openai_api_key", None), temperature=0.0, max_tokens=16,
                               timeout=getattr(ctx, "request_timeout", 60.0),
                               max_retries=getattr(ctx, "max_retries", 3))

    def messages(self, entity: dict, *, image: str | None, image_desc: dict | None, ctx: Any) -> list | None:
        """The chat messages asking for the rating (``None`` when there is nothing to judge)."""
        from langchain_core.messages import HumanMessage, SystemMessage

        from tools.clues.precomputed import describe_all

        question = f"Candidate entity: {entity_text(entity)}\nHow well does the image match this entity (0-1)?"
        if image:
            content = [{"type": "text", "text": question},
                       {"type": "image_url", "image_url": {"url": image_data_url(image)}}]
        elif image_desc and describe_all(image_desc):
            content = f"Image description: {describe_all(image_desc)}\n{question}"
        else:
            return None
        return [SystemMessage(content=SYSTEM), HumanMessage(content=content)]

    def score(self, entity: dict, *, image: str | None, image_desc: dict | None, ctx: Any) -> float:
        from tools.models import invoke_model

        key = (image_key(image) if image else repr(image_desc), entity_text(entity))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        messages = self.messages(entity, image=image, image_desc=image_desc, ctx=ctx)
        if messages is None:
            return 0.0
        model = self._model(ctx)
        answer = _text(invoke_model(model, messages, spec=self.spec, setting="verifier"))
        value = parse_score(answer)
        if value is None:
            from langchain_core.messages import AIMessage, HumanMessage

            retry = [*messages, AIMessage(content=answer), HumanMessage(content=RETRY)]
            answer = _text(invoke_model(model, retry, spec=self.spec, setting="verifier"))
            value = parse_score(answer)
        if value is None:
            raise ModelError(f"verifier '{self.name}' gave no 0-1 score: {answer[:200]!r}")
        with self._lock:
            self._cache[key] = value
        return value
