"""Run-time configuration of the I2CR graph (its ``context_schema``).

Every threshold, the clue order, the round limit and every model is a field
here, never a constant in a node. Each field can be set three ways, strongest
first:

1. ``graph.invoke(..., context={"linker_model": "openai:gpt-4o-mini"})``
   (or the "Context" panel in LangGraph Studio);
2. an environment variable ``I2CR_<FIELD NAME IN CAPITALS>``, e.g.
   ``I2CR_LINKER_MODEL=openai:qwen2.5 I2CR_REFLECTION_THRESHOLD=0.5``;
3. the default below.

Model specs are ``provider:model`` strings (see ``tools/models.py``):
``embedded`` (the packaged offline default), ``openai:<model>`` (OpenAI or any
OpenAI-compatible server via ``openai_base_url``), ``huggingface:<hub id or
local path, a .gguf file included>``.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING as _MISSING
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from tools.errors import ConfigError

from tools.context_types import CLUE_TYPES
ENV_PREFIX = "I2CR_"


@dataclass(kw_only=True)
class Context:
    """Configuration of one I2CR run. All fields have offline defaults."""

    # ---- models -----------------------------------------------------------
    linker_model: str = field(
        default="embedded",
        metadata={"description": "Chat model that picks a candidate: 'embedded', "
                  "'openai:<model>', 'huggingface:<hub id | local dir | file.gguf>'."},
    )
    embedding_model: str = field(
        default="embedded",
        metadata={"description": "Text embedder for intra-modal reflection and retrieval: "
                  "'embedded' (packaged all-MiniLM-L6-v2), 'huggingface:<id|path>' "
                  "(sentence-transformers), 'openai:<model>'."},
    )
    verifier: str = field(
        default="embedded",
        metadata={"description": "Image-entity scorer for inter-modal verification: 'embedded' "
                  "(clue text vs entity description in embedding space), 'clip:<id|path>', "
                  "'judge:<chat model spec>' (vision chat model as judge)."},
    )
    caption_model: str = field(
        default="embedded",
        metadata={"description": "Captioner: 'embedded' (composed from the other clues), "
                  "'openai:<vision model>', 'huggingface:<image-to-text id|path>'."},
    )
    object_model: str = field(
        default="embedded",
        metadata={"description": "Object tool: 'embedded' (OpenCV face/person cascades + "
                  "ImageNet EfficientNet-lite0 tags), 'huggingface:<detection id|path>'."},
    )
    scene_model: str = field(
        default="embedded",
        metadata={"description": "Scene tool: 'embedded' (offline heuristic), "
                  "'clip:<id|path>' (zero-shot over place labels)."},
    )
    ocr_engine: str = field(
        default="rapidocr",
        metadata={"description": "OCR engine: 'rapidocr' (models inside the wheel) or 'tesseract'."},
    )
    ocr_min_confidence: float = field(
        default=0.7,
        metadata={"description": "OCR lines below this confidence are dropped."},
    )
    object_min_confidence: float | None = field(
        default=None,
        metadata={"description": "Detections below this confidence are dropped. Empty = the tool's own "
                  "(0.5 closed-set detectors, 0.1 open-vocabulary, 0.05 ImageNet classifier)."},
    )
    object_labels: list[str] | None = field(
        default=None,
        metadata={"description": "Labels for open-vocabulary detectors (OWL-ViT/OWLv2). Empty = the "
                  "shipped list tools/clues/data/object_labels.txt."},
    )
    openai_base_url: str | None = field(
        default=None,
        metadata={"description": "Base URL for 'openai:' specs (vLLM, Ollama, llama.cpp server...). "
                  "Falls back to OPENAI_BASE_URL."},
    )
    openai_api_key: str | None = field(
        default=None,
        metadata={"description": "API key for 'openai:' specs. Falls back to OPENAI_API_KEY; "
                  "a placeholder is used for keyless local servers."},
    )

    # ---- method -------------------------------------------------------------
    linker_mode: Literal["fused", "llm"] = field(
        default="fused",
        metadata={"description": "'fused' (default): each round scores every candidate with learned weights "
                  "over cheap text/clue evidence, asks the LLM once (see llm_scoring) "
                  "only when that is not decisive, and re-chooses from the same distribution. 'llm': the "
                  "reference loop, one LLM answer per attempt, re-asked with the pick excluded."},
    )
    gate_threshold: float = field(
        default=0.95,
        metadata={"description": "Fused mode: when the text evidence gives the top candidate at least this "
                  "probability the LLM is not asked (1.0 = always ask, 0 = never)."},
    )
    confidence_threshold: float = field(
        default=0.5,
        metadata={"description": "Fused mode's reflection: the pick's fused probability must reach this "
                  "(it replaces the cosine alpha, which is one of the fused features)."},
    )
    llm_scoring: Literal["auto", "likelihood", "choice"] = field(
        default="auto",
        metadata={"description": "Fused mode, how the LLM's opinion is read. 'likelihood': the log-probability "
                  "of each candidate's name as the answer to 'who is <mention> in this text?' (one short "
                  "prompt, names scored after it; needs token log-probabilities of a given continuation: the "
                  "embedded llama.cpp model, local transformers models). 'choice': the log-probabilities of "
                  "the candidates' letters in a lettered list (OpenAI-compatible top_logprobs, llama.cpp, "
                  "transformers; other models: a sampled answer). 'auto': likelihood where the model supports "
                  "it, else choice."},
    )
    candidate_order: Literal["auto", "ranked", "unordered"] = field(
        default="auto",
        metadata={"description": "Fused mode: whether the candidate list's order is evidence (the list-rank "
                  "features). 'ranked': yes; 'unordered': no, shuffling the list cannot change the answer; "
                  "'auto' (default): ranked for knowledge-base retrieval results, unordered for lists given "
                  "with the input."},
    )
    nil_threshold: float | None = field(
        default=0.5,
        metadata={"description": "Fused mode: answer nil when, of the best candidate and the calibrated "
                  "'none of these' alternative scored beside the candidates, nil's share of their probability "
                  "exceeds this (0.5: nil when it is the most probable answer; higher: nil more rarely). "
                  "Empty/'off' = never answer nil from the scores (weights files without a nil row never do)."},
    )
    llm_in_clue_rounds: bool = field(
        default=False,
        metadata={"description": "Fused mode: also ask the LLM again, with the clues, in clue rounds that are "
                  "not decisive. False (default): clue rounds rescore the cheap evidence with the clues and "
                  "reuse the LLM's round-1 scores, at no model call."},
    )
    fusion_weights: str | None = field(
        default=None,
        metadata={"description": "Weights file of the fused scorer (written by evals/fit_fusion.py). "
                  "Empty = the packaged tools/data/fusion_weights.json."},
    )
    llm_weight: float | None = field(
        default=None,
        metadata={"description": "Weight of the LLM's log-probabilities in the fused score. Empty = the "
                  "weights file's value for the scoring method used (fitted by evals/fit_llm_weight.py)."},
    )
    top_k: int = field(default=10, metadata={"description": "Candidates retrieved from the knowledge base."})
    reflection_threshold: float = field(
        default=0.5,
        metadata={"description": "alpha: cosine(mention+context, entity name+description) a pick "
                  "must reach to pass intra-modal reflection. The reference uses 0.8 with its own "
                  "embedder; 0.5 is calibrated for the embedded all-MiniLM-L6-v2 (see README)."},
    )
    max_rechoices: int = field(
        default=3,
        metadata={"description": "Re-asks of the linker, pick excluded, after a failed reflection "
                  "(reference 3). The best-scoring pick wins if none passes."},
    )
    verification_threshold: float | None = field(
        default=None,
        metadata={"description": "tau: image-entity score a pick must reach to pass verification. "
                  "Empty = the scorer's own default (CLIP 0.31 as in the reference)."},
    )
    clue_order: list[str] = field(
        default_factory=lambda: list(CLUE_TYPES),
        metadata={"description": "Visual clues tried, one per round, in this order: "
                  "any of 'ocr', 'objects', 'scene', 'caption'."},
    )
    max_rounds: int = field(
        default=4,
        metadata={"description": "Most visual-clue rounds after the text round."},
    )
    accumulate_clues: bool = field(
        default=True,
        metadata={"description": "Give the linker every clue gathered so far (True) or only the "
                  "newest one (False, the reference behaviour)."},
    )
    fallback: Literal["text", "best"] = field(
        default="text",
        metadata={"description": "When no round verifies: 'text' = the round-1 answer (reference), "
                  "'best' = the answer with the highest verification score."},
    )
    allow_nil: bool = field(
        default=True,
        metadata={"description": "Offer the linker a 'nil' (none of the candidates) answer."},
    )
    unparseable_fallback: Literal["top_candidate", "nil"] = field(
        default="top_candidate",
        metadata={"description": "Answer of a round in which the linker never gave a usable "
                  "pick: the first (top-ranked) candidate, or nil."},
    )
    human_review: bool = field(
        default=False,
        metadata={"description": "Pause for a person when no round verified (status 'fallback'): the run "
                  "interrupts with the proposed answer and the candidates, and is resumed with "
                  "'accept', 'nil' or a candidate's qid or name. Needs a checkpointer (the "
                  "LangGraph server and Studio have one)."},
    )
    use_precomputed_clues: bool = field(
        default=True,
        metadata={"description": "Use image descriptions the record carries (e.g. WikiMEL's "
                  "mention_imgdesc_Azure) instead of running the image tools."},
    )

    # ---- decoding and transport ---------------------------------------------
    temperature: float = field(default=0.0, metadata={"description": "Linker temperature (0 = deterministic)."})
    max_desc_chars: int = field(default=300, metadata={"description": "Candidate descriptions are cut to this many characters in the prompt."})
    max_tokens: int = field(default=16, metadata={"description": "Most tokens the linker may answer with."})
    request_timeout: float = field(default=60.0, metadata={"description": "Seconds before a model request times out."})
    max_retries: int = field(default=3, metadata={"description": "Retries, with exponential backoff, of a failed model request."})

    # ---- knowledge base -------------------------------------------------------
    kb_path: str | None = field(
        default=None,
        metadata={"description": "Chroma persistent directory (default: the user's data dir)."},
    )
    kb_host: str | None = field(default=None, metadata={"description": "Chroma server host (uses HttpClient when set)."})
    kb_port: int = field(default=8000, metadata={"description": "Chroma server port."})
    kb_collection: str = field(default="entities", metadata={"description": "Chroma collection name."})

    def __post_init__(self) -> None:
        """Fill fields left at their default from ``I2CR_*`` environment variables, then check."""
        for f in fields(self):
            env = os.environ.get(ENV_PREFIX + f.name.upper())
            if env is None or not f.init:
                continue
            default = f.default if f.default_factory is _MISSING else f.default_factory()  # type: ignore[misc]
            if getattr(self, f.name) == default:
                setattr(self, f.name, coerce_setting(f.name, env, origin=ENV_PREFIX + f.name.upper()))
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the setting when a value is out of range."""
        if isinstance(self.clue_order, str):
            self.clue_order = [c.strip() for c in self.clue_order.split(",") if c.strip()]
        bad = [c for c in self.clue_order if c not in CLUE_TYPES]
        if bad:
            raise ConfigError(f"clue_order: unknown clue(s) {bad}; choose from {list(CLUE_TYPES)}")
        for name in ("top_k", "max_rechoices", "max_rounds", "max_tokens", "max_retries", "max_desc_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0 or (name in ("top_k", "max_tokens") and value < 1):
                raise ConfigError(f"{name}: expected a {'positive' if name in ('top_k', 'max_tokens') else 'non-negative'} integer, got {value!r}")
        if self.linker_mode not in ("fused", "llm"):
            raise ConfigError(f"linker_mode: expected 'fused' or 'llm', got {self.linker_mode!r}")
        if self.llm_scoring not in ("auto", "likelihood", "choice"):
            raise ConfigError(f"llm_scoring: expected 'auto', 'likelihood' or 'choice', got {self.llm_scoring!r}")
        if self.candidate_order not in ("auto", "ranked", "unordered"):
            raise ConfigError(f"candidate_order: expected 'auto', 'ranked' or 'unordered', got {self.candidate_order!r}")
        if self.nil_threshold is not None and (isinstance(self.nil_threshold, bool) or not isinstance(
                self.nil_threshold, (int, float)) or not 0 <= self.nil_threshold <= 1):
            raise ConfigError(f"nil_threshold: expected a number between 0 and 1 or empty (off), "
                              f"got {self.nil_threshold!r}")
        for name in ("gate_threshold", "confidence_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ConfigError(f"{name}: expected a number between 0 and 1, got {value!r}")
        if self.fallback not in ("text", "best"):
            raise ConfigError(f"fallback: expected 'text' or 'best', got {self.fallback!r}")
        if self.unparseable_fallback not in ("top_candidate", "nil"):
            raise ConfigError(f"unparseable_fallback: expected 'top_candidate' or 'nil', got {self.unparseable_fallback!r}")
        if not isinstance(self.reflection_threshold, (int, float)):
            raise ConfigError(f"reflection_threshold: expected a number, got {self.reflection_threshold!r}")



def coerce_setting(name: str, raw: str, *, origin: str | None = None) -> Any:
    """Turn a string (environment variable, ``--set key=value``) into the type of setting ``name``.

    Raises ``ConfigError`` naming ``origin`` (default: the setting) when the value does not fit.
    """
    known = {f.name: f for f in fields(Context)}
    label = origin or name
    if name not in known:
        raise ConfigError(f"{label}: unknown setting; choose from {sorted(known)}")
    f = known[name]
    default = f.default_factory() if f.default_factory is not _MISSING else f.default  # type: ignore[misc]
    text = raw.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float) or name in ("verification_threshold", "object_min_confidence", "llm_weight"):
            return float(text) if text and text.lower() not in ("none", "off") else None
        if isinstance(default, list) or name == "object_labels":
            return json.loads(text) if text.startswith("[") else [c.strip() for c in text.split(",") if c.strip()]
    except ValueError as exc:
        raise ConfigError(f"{label}={raw!r}: {exc}") from None
    return (text or None) if default is None else text


def resolve_context(runtime: Any) -> Context:
    """The ``Context`` of a node's ``runtime`` (a dict or nothing is turned into one)."""
    ctx = getattr(runtime, "context", None)
    if isinstance(ctx, Context):
        return ctx
    if ctx is None:
        return Context()
    if isinstance(ctx, dict):
        return Context(**ctx)
    raise TypeError(f"context must be a dict or graph.context.Context, not {type(ctx).__name__}")
