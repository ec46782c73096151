"""Candidates as the graph and the eval scripts take them: identity, checks and normalisation.

``normalize_candidates`` turns a candidate list (objects ``{qid, name, desc, ...}`` or
bare names) into clean dicts and raises ``InputError`` naming the bad item;
``candidate_key`` is a candidate's identity (its QID, else its name);
``check_text`` refuses text that is not UTF-8.
"""

from __future__ import annotations

from typing import Any

from tools.errors import InputError


def candidate_key(candidate: dict) -> str:
    """The identity of a candidate: its QID, else its name."""
    return str(candidate.get("qid") or candidate.get("name"))


MAX_NAME_CHARS = 1000  # longer is not a name (Wikidata's longest labels are a few hundred characters)


def normalize_candidates(raw: Any, *, where: str = "candidates", dropped: list[str] | None = None,
                         max_name_chars: int | None = MAX_NAME_CHARS) -> list[dict]:
    """Check and clean a candidate list; strings are taken as names.

    Duplicates (same QID, else same name) are dropped, the first kept; when ``dropped`` is a list,
    a line per dropped item (``"[2] (Q1 'Jordan') repeats [0]"``) is appended to it. A name longer than
    ``max_name_chars`` is an ``InputError`` (``None``: no limit, for lists already in a knowledge base).
    """
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise InputError(f"{where}: expected a list of {{qid, name, desc}} objects, got {type(raw).__name__}")
    out: list[dict] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise InputError(f"{where}[{i}]: expected an object with a 'name', got {type(item).__name__}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}[{i}]: candidate has no name (got {item!r:.120})")
        check_text(name, f"{where}[{i}].name")
        if max_name_chars is not None and len(name.strip()) > max_name_chars:
            raise InputError(f"{where}[{i}].name: {len(name.strip()):,} characters; a name has at most "
                             f"{max_name_chars:,} (is a description in the 'name' field?)")
        cand = {"name": name.strip()}
        if item.get("qid") not in (None, ""):
            cand["qid"] = str(item["qid"]).strip()
        desc = item.get("desc", item.get("description"))
        if desc is not None:
            cand["desc"] = check_text(str(desc), f"{where}[{i}].desc")
        if isinstance(item.get("score"), (int, float)):
            cand["score"] = float(item["score"])
        if isinstance(item.get("image"), str) and item["image"]:
            cand["image"] = item["image"]  # an entity image (knowledge bases may carry one)
        if isinstance(item.get("aliases"), list):
            cand["aliases"] = [str(a) for a in item["aliases"] if str(a).strip()]
        key = candidate_key(cand)
        if key not in seen:
            seen[key] = i
            out.append(cand)
        elif dropped is not None:
            ident = f"{cand['qid']} {cand['name']!r:.60}" if cand.get("qid") else f"{cand['name']!r:.60}"
            dropped.append(f"[{i}] ({ident}) repeats [{seen[key]}]")
    return out


def check_text(text: str, where: str) -> str:
    """``text`` unchanged, or ``InputError`` naming ``where`` when it holds bytes that are not UTF-8.

    Bytes that are not UTF-8 reach Python as lone surrogates (``sys.argv``, ``surrogateescape``
    file names); no tokenizer or JSON writer accepts them, so they are refused at the entry.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        byte = f"0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise InputError(f"{where}: not valid UTF-8 text (byte {byte} at character {exc.start}); "
                         "re-encode it as UTF-8") from None
    return text
