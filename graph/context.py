"""Run-time configuration of the I2CR graph (its ``context_schema``).

Every threshold, the clue order, the round limit and every model is a field
here, never a constant in a node. ``Context`` is a pydantic-settings
``BaseSettings``: each field can be set three ways, strongest first:

1. ``graph.invoke(..., context={"linker_model": "openai:gpt-4o-mini"})``
   (or the "Context" panel in LangGraph Studio), or ``Context(field=value)``;
2. an environment variable ``I2CR_<FIELD NAME IN CAPITALS>``, e.g.
   ``I2CR_LINKER_MODEL=openai:qwen2.5 I2CR_REFLECTION_THRESHOLD=0.5``;
3. the default below.

Values are checked when the ``Context`` is built: types, ranges (thresholds in
0..1, counts >= 0 or >= 1, temperature >= 0), the clue names, and every model
spec (``tools/specs.check_model_settings``: provider known, a model named,
local paths present, an API key or base URL for ``openai:``), so a bad setting
is one ``ConfigError`` line naming it before the first mention.

Model specs are ``provider:model`` strings (see ``tools/models.py``):
``embedded`` (the packaged offline default), ``openai:<model>`` (OpenAI or any
OpenAI-compatible server via ``openai_base_url``), ``huggingface:<hub id or
local path, a .gguf file included>``. From Python a model object may stand in
for the linker, embedding, verifier and caption specs.
"""

from __future__ import annotations

import json
import os
import re
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tools.clues.base import CLUE_TYPES
from tools.errors import ConfigError, InputError
from tools.specs import check_model_settings

ENV_PREFIX = "I2CR_"

# a spec string, or (from Python) a model/embedder/scorer object; the JSON schema (Studio) shows a string
ModelSetting = Union[str, SkipJsonSchema[Any]]  # noqa: UP007 (pydantic's documented SkipJsonSchema form)


class Context(BaseSettings):
    """Configuration of one I2CR run. All fields have offline defaults."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", env_ignore_empty=True,
                                      arbitrary_types_allowed=True, allow_inf_nan=False)

    # ---- models -----------------------------------------------------------
    linker_model: ModelSetting = Field(
        default="embedded",
        description="Chat model that picks a candidate: 'embedded', "
                  "'openai:<model>', 'huggingface:<hub id | local dir | file.gguf>'.",
    )
    embedding_model: ModelSetting = Field(
        default="embedded",
        description="Text embedder for intra-modal reflection and retrieval: "
                  "'embedded' (packaged all-MiniLM-L6-v2), 'huggingface:<id|path>' "
                  "(sentence-transformers), 'openai:<model>'.",
    )
    verifier: ModelSetting = Field(
        default="embedded",
        description="Image-entity scorer for inter-modal verification: 'embedded' "
                  "(clue text vs entity description in embedding space), 'clip:<id|path>', "
                  "'judge:<chat model spec>' (vision chat model as judge).",
    )
    caption_model: ModelSetting = Field(
        default="embedded",
        description="Captioner: 'embedded' (composed from the other clues), "
                  "'openai:<vision model>', 'huggingface:<image-to-text id|path>'.",
    )
    object_model: str = Field(
        default="embedded",
        description="Object tool: 'embedded' (OpenCV face/person cascades + "
                  "ImageNet EfficientNet-lite0 tags), 'huggingface:<detection id|path>'.",
    )
    scene_model: str = Field(
        default="embedded",
        description="Scene tool: 'embedded' (offline heuristic), "
                  "'clip:<id|path>' (zero-shot over place labels).",
    )
    ocr_engine: str = Field(
        default="rapidocr",
        description="OCR engine: 'rapidocr' (models inside the wheel) or 'tesseract'.",
    )
    ocr_min_confidence: float = Field(
        default=0.7, ge=0, le=1,
        description="OCR lines below this confidence are dropped.",
    )
    object_min_confidence: float | None = Field(
        default=None, ge=0, le=1,
        description="Detections below this confidence are dropped. Empty = the tool's own "
                  "(0.5 closed-set detectors, 0.1 open-vocabulary, 0.05 ImageNet classifier).",
    )
    object_labels: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Labels for open-vocabulary detectors (OWL-ViT/OWLv2). Empty = the "
                  "shipped list tools/clues/data/object_labels.txt.",
    )
    openai_base_url: str | None = Field(
        default=None,
        description="Base URL for 'openai:' specs (vLLM, Ollama, llama.cpp server...). "
                  "Falls back to OPENAI_BASE_URL.",
    )
    openai_api_key: str | None = Field(
        default=None,
        description="API key for 'openai:' specs. Falls back to OPENAI_API_KEY; "
                  "a placeholder is used for keyless local servers.",
    )

    # ---- method -------------------------------------------------------------
    linker_mode: Literal["fused", "llm"] = Field(
        default="fused",
        description="'fused' (default): each round scores every candidate with learned weights "
                  "over cheap text/clue evidence, asks the LLM once (see llm_scoring) "
                  "only when that is not decisive, and re-chooses from the same distribution. 'llm': the "
                  "reference loop, one LLM answer per attempt, re-asked with the pick excluded.",
    )
    gate_threshold: float = Field(
        default=0.95, ge=0, le=1,
        description="Fused mode: when the text evidence gives the top candidate at least this "
                  "probability the LLM is not asked (1.0 = always ask, 0 = never).",
    )
    confidence_threshold: float = Field(
        default=0.5, ge=0, le=1,
        description="Fused mode's reflection: the pick's fused probability must reach this "
                  "(it replaces the cosine alpha, which is one of the fused features).",
    )
    llm_scoring: Literal["auto", "likelihood", "choice"] = Field(
        default="auto",
        description="Fused mode, how the LLM's opinion is read. 'likelihood': the log-probability "
                  "of each candidate's name as the answer to 'who is <mention> in this text?' (one short "
                  "prompt, names scored after it; needs token log-probabilities of a given continuation: the "
                  "embedded llama.cpp model, local transformers models). 'choice': the log-probabilities of "
                  "the candidates' letters in a lettered list (OpenAI-compatible top_logprobs, llama.cpp, "
                  "transformers; other models: a sampled answer). 'auto': likelihood where the model supports "
                  "it, else choice.",
    )
    candidate_order: Literal["auto", "ranked", "unordered"] = Field(
        default="auto",
        description="Fused mode: whether the candidate list's order is evidence (the list-rank "
                  "features). 'ranked': yes; 'unordered': no, shuffling the list cannot change the answer; "
                  "'auto' (default): ranked for knowledge-base retrieval results, unordered for lists given "
                  "with the input.",
    )
    nil_threshold: float | None = Field(
        default=0.5, ge=0, le=1,
        description="Fused mode: answer nil when, of the best candidate and the calibrated "
                  "'none of these' alternative scored beside the candidates, nil's share of their probability "
                  "exceeds this (0.5: nil when it is the most probable answer; higher: nil more rarely). "
                  "Empty/'off' = never answer nil from the scores (weights files without a nil row never do).",
    )
    nil_needs_text: bool = Field(
        default=True,
        description="Fused mode: answer nil only when the text evidence alone (before the LLM's scores are "
                  "added) answers nil too (default): the LLM can take a nil back but cannot turn a text answer "
                  "into nil. False: the text and LLM evidence combined decide (docs/generalisation.md, phase 7).",
    )
    llm_in_clue_rounds: bool = Field(
        default=False,
        description="Fused mode: also ask the LLM again, with the clues, in clue rounds that are "
                  "not decisive. False (default): clue rounds rescore the cheap evidence with the clues and "
                  "reuse the LLM's round-1 scores, at no model call.",
    )
    llm_context_top: int = Field(
        default=4, ge=0,
        description="Fused mode, when the weights file has an llm_context term: the text's likelihood with the "
                  "mention replaced by each candidate's name is scored for this many of the text prior's best "
                  "candidates (one more scoring call; the others get the floor). 0 = never scored.",
    )
    fusion_weights: str | None = Field(
        default=None,
        description="Weights file of the fused scorer (written by evals/fit_fusion.py). "
                  "Empty = the packaged tools/data/fusion_weights.json.",
    )
    llm_weight: float | None = Field(
        default=None,
        description="Weight of the LLM's log-probabilities in the fused score. Empty = the "
                  "weights file's value for the scoring method used (fitted by evals/fit_llm_weight.py).",
    )
    top_k: int = Field(default=10, ge=1, description="Candidates retrieved from the knowledge base.")
    reflection_threshold: float = Field(
        default=0.5, ge=0, le=1,
        description="alpha: cosine(mention+context, entity name+description) a pick "
                  "must reach to pass intra-modal reflection. The reference uses 0.8 with its own "
                  "embedder; 0.5 is calibrated for the embedded all-MiniLM-L6-v2 "
                  "(docs/method.md, 'Thresholds of the offline defaults').",
    )
    max_rechoices: int = Field(
        default=3, ge=0,
        description="Re-asks of the linker, pick excluded, after a failed reflection "
                  "(reference 3). The best-scoring pick wins if none passes.",
    )
    verification_threshold: float | None = Field(
        default=None, ge=0, le=1,
        description="tau: image-entity score a pick must reach to pass verification. "
                  "Empty = the scorer's own default (CLIP 0.31 as in the reference).",
    )
    clue_order: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(CLUE_TYPES),
        description="Visual clues tried, one per round, in this order: "
                  "any of 'ocr', 'objects', 'scene', 'caption'.",
    )
    max_rounds: int = Field(
        default=4, ge=0,
        description="Most visual-clue rounds after the text round.",
    )
    accumulate_clues: bool = Field(
        default=True,
        description="Give the linker every clue gathered so far (True) or only the "
                  "newest one (False, the reference behaviour).",
    )
    refute_contradictions: bool = Field(
        default=True,
        description="Verification also checks what the image rules out: the image description's person "
                  "words against the entity's 'Sex:' attribute. A contradiction fails the pick (its verify step "
                  "in the trace carries 'refuted' and the reason), and when no round verifies a refuted round-1 answer gives way "
                  "to the best unrefuted answer of a clue round. No attribute or no person words: no effect.",
    )
    nil_fallback: Literal["text", "last_clue"] = Field(
        default="text",
        description="When no round verifies and round 1 answered nil: 'text' = the round-1 nil stands "
                  "(reference); 'last_clue' = the last clue round's answer, made with every clue gathered "
                  "(an entity the image did not refute, or nil). Measured: +0.3 points on WikiMEL dev "
                  "(no nil golds), -0.7 on a variant with 14% nil golds (docs/method.md).",
    )
    fallback: Literal["text", "best"] = Field(
        default="text",
        description="When no round verifies: 'text' = the round-1 answer (reference), "
                  "'best' = the answer with the highest verification score.",
    )
    allow_nil: bool = Field(
        default=True,
        description="Offer the linker a 'nil' (none of the candidates) answer.",
    )
    unparseable_fallback: Literal["top_candidate", "nil"] = Field(
        default="top_candidate",
        description="Answer of a round in which the linker never gave a usable "
                  "pick: the first (top-ranked) candidate, or nil.",
    )
    human_review: bool = Field(
        default=False,
        description="Pause for a person when no round verified (status 'fallback'): the run "
                  "interrupts with the proposed answer and the candidates, and is resumed with "
                  "'accept', 'nil' or a candidate's qid or name. Needs a checkpointer (the "
                  "LangGraph server and Studio have one).",
    )
    use_precomputed_clues: bool = Field(
        default=True,
        description="Use image descriptions the record carries (e.g. WikiMEL's "
                  "mention_imgdesc_Azure) instead of running the image tools.",
    )
    strict_image: bool = Field(
        default=False,
        description="A bad image fails the mention (exit 2) instead of linking on text with the reason recorded.",
    )

    # ---- decoding and transport ---------------------------------------------
    temperature: float = Field(default=0.0, ge=0, description="Linker temperature (0 = deterministic).")
    max_desc_chars: int = Field(default=300, ge=0, description="Candidate descriptions are cut to this many characters in the prompt.")
    max_context_chars: int = Field(
        default=4000, ge=0,
        description="The context is cut to this many characters around the mention's first occurrence "
                    "at the entry, so that the prompt fits the model's window (0 = no cut).",
    )
    max_tokens: int = Field(default=16, ge=1, description="Most tokens the linker may answer with.")
    request_timeout: float = Field(default=60.0, gt=0, description="Seconds before a model request times out.")
    max_retries: int = Field(default=3, ge=0, description="Retries, with exponential backoff, of a failed model request.")

    # ---- knowledge base -------------------------------------------------------
    kb_path: str | None = Field(
        default=None,
        description="Chroma persistent directory (default: the user's data dir).",
    )
    kb_host: str | None = Field(default=None, description="Chroma server host (uses HttpClient when set).")
    kb_port: int = Field(default=8000, ge=1, le=65535, description="Chroma server port.")
    kb_collection: str = Field(default="entities", description="Chroma collection name.")

    def __init__(self, **values: Any) -> None:
        """Build from ``values``, then ``I2CR_*`` variables, then defaults; ``ConfigError`` names a bad setting."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_first_error(exc, values)) from None
        check_model_settings(self)

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> tuple[Any, ...]:
        """Explicit values, then ``I2CR_*`` variables (no .env or secrets files: `langgraph dev` loads .env)."""
        return init_settings, env_settings

    @field_validator("nil_threshold", "verification_threshold", "object_min_confidence", "llm_weight",
                     mode="before")
    @classmethod
    def _off_is_none(cls, value: Any) -> Any:
        """``""``, ``"off"`` or ``"none"`` (environment, ``--set``) turn an optional number off."""
        return None if isinstance(value, str) and value.strip().lower() in ("", "off", "none") else value

    @field_validator("openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """``http(s)://host...``: ``localhost:8000`` (no scheme) or a URL with spaces would fail on the first call."""
        if value is None:
            return None
        if not re.match(r"^https?://[^\s/?#]+(/\S*)?$", value.strip()):
            raise ValueError("expected an http:// or https:// URL such as http://localhost:8000/v1")
        return value.strip()

    @field_validator("clue_order", "object_labels", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """``"ocr,caption"`` or a JSON list (environment, ``--set``) -> a list."""
        return _as_list(value)

    @field_validator("clue_order")
    @classmethod
    def _known_clues(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if c not in CLUE_TYPES]
        if bad:
            raise ValueError(f"unknown clue(s) {bad}; choose from {list(CLUE_TYPES)}")
        return value


def _as_list(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc.msg})") from None
    return [c.strip() for c in text.split(",") if c.strip()]


def _did_you_mean(name: str) -> str:
    """`` (did you mean 'max_rounds'?)`` for a misspelt or capitalised setting name, else ``""``."""
    import difflib

    key = name.strip().lower().replace("-", "_")
    close = [key] if key in Context.model_fields else difflib.get_close_matches(key, list(Context.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _env_name(name: str) -> str | None:
    """The ``I2CR_*`` variable that sets ``name``, when there is one (names are case-insensitive)."""
    wanted = (ENV_PREFIX + name).upper()
    return next((k for k in os.environ if k.upper() == wanted), None)


def _first_error(exc: ValidationError, values: dict[str, Any]) -> str:
    """One line naming the setting (or its environment variable) and what is wrong with it."""
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err.get("loc") else "settings"
    msg = _explain(name, err)
    if err["type"] == "extra_forbidden":
        return f"{name}: unknown setting{_did_you_mean(name)}; choose from {sorted(Context.model_fields)}"
    env = None if name in values else _env_name(name)
    label = f"{env}={os.environ[env]!r}" if env else name
    got = "" if env else f", got {err.get('input')!r:.80}"
    return f"{label}: {msg}{got}"


def _explain(name: str, err: Any) -> str:
    """A pydantic error as "expected ..." (ranges spelt out from the field's bounds)."""
    if err["type"] in ("greater_than_equal", "less_than_equal", "greater_than", "less_than") \
            and name in Context.model_fields:
        info = Context.model_fields[name]
        bound = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le") if getattr(m, k, None) is not None}
        kind = "an integer" if info.annotation is int else "a number"
        if "ge" in bound and "le" in bound:
            return f"expected {kind} between {bound['ge']} and {bound['le']}"
        if "ge" in bound or "gt" in bound:
            return f"expected {kind} {'>= ' + str(bound['ge']) if 'ge' in bound else '> ' + str(bound['gt'])}"
    return err["msg"].removeprefix("Value error, ").replace("Input should be ", "expected ", 1)


_adapters: dict[str, TypeAdapter] = {}


def coerce_setting(name: str, raw: str, *, origin: str | None = None) -> Any:
    """Turn a string (environment variable, ``--set key=value``) into the type of setting ``name``.

    Checks the type and the range; raises ``ConfigError`` naming ``origin`` (default: the setting).
    """
    label = origin or name
    known = Context.model_fields
    if name not in known:
        raise ConfigError(f"{label}: unknown setting{_did_you_mean(name)}; choose from {sorted(known)}")
    info = known[name]
    if name not in _adapters:
        typ = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        _adapters[name] = TypeAdapter(typ, config=ConfigDict(allow_inf_nan=False))  # type and range
    text = raw.strip()
    try:
        if name in ("clue_order", "object_labels"):
            value: Any = _as_list(text)
        elif text.lower() in ("", "off", "none") and type(None) in get_args(info.annotation):
            return None
        else:
            value = text
        value = _adapters[name].validate_python(value)
        if name == "clue_order":
            value = Context._known_clues(value)
        if name == "openai_base_url":
            value = Context._http_url(value)
        return value
    except ValidationError as exc:
        raise ConfigError(f"{label}={raw!r}: {_explain(name, exc.errors()[0])}") from None
    except ValueError as exc:
        raise ConfigError(f"{label}={raw!r}: {exc}") from None



def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["max_rounds=2", "clue_order=ocr,caption"]`` (``--set key=value``) → typed settings; unknown keys rejected."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--set {pair!r}: expected key=value")
        key = key.strip().replace("-", "_")
        out[key] = coerce_setting(key, value, origin=f"--set {key}")
    return out

_defaults: dict[tuple, Context] = {}


def default_context() -> Context:
    """``Context()`` for the current environment, built once per distinct set of ``I2CR_*``/``OPENAI_*`` variables."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith((ENV_PREFIX, "OPENAI_"))))
    if key not in _defaults:
        if len(_defaults) > 8:
            _defaults.clear()
        _defaults[key] = Context()
    return _defaults[key]


def resolve_context(runtime: Any) -> Context:
    """The ``Context`` of a node's ``runtime`` (a dict or nothing is turned into one)."""
    ctx = getattr(runtime, "context", None)
    if isinstance(ctx, Context):
        return ctx
    if ctx is None:
        return default_context()
    if isinstance(ctx, dict):
        return Context(**ctx)
    raise TypeError(f"context must be a dict or graph.context.Context, not {type(ctx).__name__}")
