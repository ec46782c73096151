"""Prompts of the text-linking node.

The prompt is laid out so that everything that stays the same across the
re-asks of one round (instructions, candidates, mention, context, clues) comes
first and what changes (a complaint about an unusable answer) comes last: local
runtimes such as llama.cpp then reuse the cached prefix. A pick ruled out by
reflection is dropped from the numbered list (small models answer a number they
were told to avoid) and named near the end.
"""

SYSTEM = (
    "You are an entity linking system. Given a mention in a text and a numbered list of "
    "candidate entities from a knowledge base, you choose the candidate the mention refers to. "
    "Reply with the number of the candidate only."
)

SYSTEM_NIL = (
    "You are an entity linking system. Given a mention in a text and a numbered list of "
    "candidate entities from a knowledge base, you choose the candidate the mention refers to. "
    "Reply with the number of the candidate only, or nil if none of them is the referent."
)

CANDIDATE_LINE = "{number}. {name}{desc}"

USER = """Candidates:
{candidates}

Mention: {mention}
Text: {context}
{clues}{rejected}{retry}
Which candidate does the mention "{mention}" refer to? {answer_format}"""

CLUES = "Visual clues from the image that goes with the text:\n{lines}\n"
CLUE_LINE = "- {label}: {text}"
CLUE_LABELS = {
    "ocr": "Text in the image",
    "objects": "Objects in the image",
    "scene": "Scene",
    "caption": "Image caption",
}

REJECTED = "Ruled out already (no longer in the list): {names}.\n"
RETRY = 'Your previous answer "{raw}" could not be used. Reply with a single candidate number.\n'

ANSWER_FORMAT = "Answer with the number only."
ANSWER_FORMAT_NIL = "Answer with the number only, or nil if none fits."

# ---- fused linker (linker_mode="fused"): one lettered choice, scored from the answer's first token ----
# Laid out for prefix caching: instructions, candidates, mention and text first; the visual
# clues of later rounds and the question last.

CHOICE_SYSTEM = (
    "You are an entity linking system. Given a mention in a text and a lettered list of "
    "candidate entities from a knowledge base, you choose the candidate the mention refers to. "
    "Reply with the letter of the candidate only."
)

CHOICE_LINE = "{label}. {name}{desc}"

CHOICE_USER = """Candidates:
{candidates}

Mention: {mention}
Text: {context}
{clues}
Which candidate does the mention "{mention}" refer to? Answer with the letter only."""

# Fused mode, llm_scoring="likelihood": the model is asked what the mention refers to (any kind of
# entity: person, place, organisation, product, ...), and each candidate's normalised name
# as it would be answered, without its disambiguator (tools.names.answer_name), is scored as the
# start of its answer (no answer is sampled), as is
# NIL_ANSWER (the model's "none" signal, read by fits that test it as nil evidence).
# The text comes first and the clues after it, so clue rounds reuse the text's KV cache.
NAME_SYSTEM = "You are an entity linking system."

NAME_USER = """Text: {context}
{clues}What does "{mention}" refer to in this text? Answer with its name."""

NIL_ANSWER = "Unknown"

PROMPT_VERSION = "name-v3"
"""Changes whenever the likelihood or letters prompt changes: cached LLM scores are keyed by it
(``evals/fit.py``), so a cache filled with another prompt is not reused."""

# Fused mode, the text's likelihood under each candidate (tools/context_likelihood.py, ``llm_context`` in the
# weights file): the model writes the mention's text out again with the mention replaced by a candidate's
# spoken name; log P(text | name) = log P(text with the name) - log P(the name alone), both as the start of
# its answer. The prompt is the same for every candidate, so its KV cache is shared.
CONTEXT_SYSTEM = "You are a helpful assistant."
CONTEXT_USER = "Write the caption of a news or encyclopedia photo."
CONTEXT_VERSION = "context-v1"
