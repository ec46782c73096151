"""Fake models for driving the graph in tests: scripted chat answers, bag-of-words embeddings, a table scorer."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage


class ScriptedChatModel(FakeListChatModel):
    """Answers from a list, in order, and records every prompt it was sent."""

    prompts: list[str] = []

    def _call(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> str:
        self.prompts.append("\n".join(str(m.content) for m in messages))
        return super()._call(messages, stop=stop, run_manager=run_manager, **kwargs)


def scripted(*answers: str) -> ScriptedChatModel:
    """A fresh scripted model (its own prompt log)."""
    return ScriptedChatModel(responses=list(answers), prompts=[])


class BagOfWordsEmbeddings(Embeddings):
    """Deterministic embeddings: hashed word counts, so cosine measures word overlap."""

    dim = 256

    def _one(self, text: str) -> list[float]:
        vec = np.zeros(self.dim)
        for word in re.findall(r"\w+", text.lower()):
            vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return vec.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


class TableScorer:
    """Verification scorer with fixed scores per entity name; records what it scored."""

    name = "table"
    default_threshold = 0.5

    def __init__(self, scores: dict[str, float], default: float = 0.0):
        self.scores, self.default, self.calls = scores, default, []

    def score(self, entity: dict, *, image: str | None, image_desc: dict | None, ctx: Any) -> float:
        self.calls.append(entity["name"])
        return self.scores.get(entity["name"], self.default)
