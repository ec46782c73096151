"""Loaders of multimodal entity-linking benchmarks into graph inputs and gold answers.

Accepted formats:

* **I2CR JSON** (WikiMEL, RichpediaMEL, WikiDiverse as the I2CR release ships
  them): ``{id: record}`` with ``mention``, ``mention_context``,
  ``mention_imgpath``, ``Candentity`` ``[{qid, name, desc}]`` and
  ``mention_imgdesc_Azure`` (a dict, or a string holding JSON or a Python dict
  literal — read safely, never evaluated). Gold answers come from a labels
  file ``{id: gold}``.
* **Plain JSONL**: one ``{mention, context, image?, candidates?, image_desc?,
  gold?, id?}`` per line (a JSON list of such objects is read the same way).

A gold answer is an entity name (a Wikipedia title with underscores is fine), a
QID (``"Q42"``), an object ``{name?, qid?}``, or ``"nil"`` (no entity, as in
WikiDiverse). A malformed record never stops loading: it becomes an
:class:`Example` with ``error`` set, naming its id (and line for JSONL).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.candidates import normalize_candidates
from tools.clues.precomputed import parse_image_desc
from tools.errors import InputError
from tools.files import check_input_file, read_json_file

QID = re.compile(r"^Q\d+$")
NIL = {"nil": True}


@dataclass
class Example:
    """One mention of a dataset: the graph input (or why there is none) and the gold answer."""

    id: str
    inputs: dict[str, Any] | None
    """Graph input (mention, context, candidates, image_desc, image, id); ``None`` if malformed."""
    gold: dict[str, Any] | None = None
    """``{"name", "qid"}`` (either may be ``None``), ``{"nil": True}``, or ``None`` when unlabelled."""
    error: str | None = None
    """Why the record cannot be run (it is written to the predictions as an error)."""
    where: str = ""
    """Where the record is: ``record '123'`` or ``line 5``."""


@dataclass
class Dataset:
    """A loaded dataset: its examples in file order, and notes for the report."""

    path: str
    format: str
    examples: list[Example]
    warnings: list[str] = field(default_factory=list)
    images_found: int = 0


def parse_gold(value: Any, *, where: str) -> dict[str, Any] | None:
    """A gold answer as ``{"name", "qid"}`` / ``{"nil": True}``; ``None`` for no label.

    Raises ``InputError`` naming ``where`` when the value is not a name, QID, object or ``"nil"``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise InputError(f"{where}: gold answer is an empty string")
        if text.lower() == "nil":
            return dict(NIL)
        if QID.match(text):
            return {"name": None, "qid": text}
        return {"name": text, "qid": None}
    if isinstance(value, dict):
        if value.get("nil") is True:
            return dict(NIL)
        name, qid = value.get("name"), value.get("qid")
        if isinstance(name, str) and name.strip().lower() == "nil" and not qid:
            return dict(NIL)
        if not (isinstance(name, str) and name.strip()) and not (isinstance(qid, str) and qid.strip()):
            raise InputError(f"{where}: gold object needs a 'name' or a 'qid' (got {value!r:.120})")
        return {"name": name.strip() if isinstance(name, str) and name.strip() else None,
                "qid": qid.strip() if isinstance(qid, str) and qid.strip() else None}
    raise InputError(f"{where}: gold answer must be a name, a QID, an object or 'nil', "
                     f"got {type(value).__name__}")


def read_labels(path: str | Path) -> dict[str, Any]:
    """Read a labels file ``{id: gold}`` (JSON); raise ``InputError`` naming the file when unusable."""
    p = Path(path)
    labels = read_json_file(p, "--labels", regular=True)
    if not isinstance(labels, dict):
        raise InputError(f"--labels: {p} must hold an object {{id: gold entity name}}, "
                         f"not a {type(labels).__name__}")
    return {str(k): v for k, v in labels.items()}


def load_dataset(path: str | Path, labels: str | Path | dict | None = None,
                 images: str | Path | None = None) -> Dataset:
    """Load ``path`` (I2CR JSON or plain JSONL) with optional ``labels`` and image folder ``images``.

    Raises ``InputError`` when the file itself is unusable; a bad record becomes an
    :class:`Example` with ``error`` set instead.
    """
    p = check_input_file(path, "dataset", regular=True)
    if images is not None and not Path(images).is_dir():
        raise InputError(f"--images: not a folder: {images}")
    label_map = labels if isinstance(labels, dict) else (read_labels(labels) if labels else {})
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"dataset: {p} is not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise InputError(f"dataset: cannot read {p}: {exc.strerror or exc}") from None
    data: Any = None
    if p.suffix.lower() not in (".jsonl", ".ndjson"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if "Extra data" not in str(exc):  # "Extra data" = several JSON values: JSON lines
                raise InputError(f"dataset: {p} is not valid JSON ({exc}); "
                                 "expected an I2CR {id: record} object or JSON lines") from None
        except RecursionError:
            raise InputError(f"dataset: {p} is nested too deeply to read as JSON") from None
    if isinstance(data, dict):
        fmt, raw = "i2cr", [(str(k), v, f"record {str(k)!r}") for k, v in data.items()]
    elif isinstance(data, list):
        fmt, raw = "json-list", [(None, v, f"item {i}") for i, v in enumerate(data)]
    elif data is None:
        fmt, raw = "jsonl", list(_json_lines(text))
    else:
        raise InputError(f"dataset: {p} holds a JSON {type(data).__name__}; expected an I2CR "
                         "{id: record} object, a list of records or JSON lines")

    if not raw:
        raise InputError(f"dataset: {p} holds no record; expected an I2CR {{id: record}} object, "
                         "a list of records or JSON lines")
    ds = Dataset(path=str(p), format=fmt, examples=[])
    seen: set[str] = set()
    image_dir = Path(images) if images else None
    for index, (key, record, where) in enumerate(raw):
        ex = _example(key, record, where, index=index, labels=label_map, image_dir=image_dir,
                      base=p.parent, i2cr=fmt == "i2cr")
        if ex.id in seen:
            ex = Example(id=f"{ex.id}@{index}", inputs=None, gold=ex.gold, where=where,
                         error=f"{where}: duplicate id {ex.id!r} (kept the first record with it)")
        seen.add(ex.id)
        ds.examples.append(ex)
        ds.images_found += bool(ex.inputs and ex.inputs.get("image"))
    if label_map:
        unknown = len(set(label_map) - seen)
        if unknown:
            ds.warnings.append(f"{unknown} label(s) name ids that are not in the dataset")
    unlabelled = sum(1 for ex in ds.examples if ex.gold is None)
    if unlabelled:
        ds.warnings.append(f"{unlabelled} record(s) without a gold answer (left out of the accuracy)")
    return ds


def _json_lines(text: str) -> Iterator[tuple[str | None, Any, str]]:
    """``(None, parsed object or a _Bad marker, "line N")`` for each non-blank line."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield None, json.loads(line), f"line {lineno}"
        except json.JSONDecodeError as exc:
            yield None, _Bad(f"line {lineno}: not valid JSON ({exc.msg})"), f"line {lineno}"
        except RecursionError:
            yield None, _Bad(f"line {lineno}: JSON nested too deeply to read"), f"line {lineno}"


class _Bad:
    """A record that could not even be parsed."""

    def __init__(self, message: str):
        self.message = message


def _example(key: str | None, record: Any, where: str, *, index: int, labels: dict, image_dir: Path | None,
             base: Path, i2cr: bool) -> Example:
    """Turn one raw record into an :class:`Example` (never raises)."""
    rid = key
    if rid is None and isinstance(record, dict) and record.get("id") not in (None, ""):
        rid = str(record["id"])
        where = f"{where} (id {rid!r})"
    if rid is None:
        rid = where.replace(" ", "") if where.startswith("line") else str(index)
    gold = None
    try:
        raw_gold = labels[rid] if rid in labels else (record.get("gold") if isinstance(record, dict) else None)
        gold = parse_gold(raw_gold, where=f"{where}: gold" if rid not in labels else f"labels[{rid!r}]")
    except InputError as exc:
        return Example(id=rid, inputs=None, error=str(exc), where=where)
    if isinstance(record, _Bad):
        return Example(id=rid, inputs=None, gold=gold, error=record.message, where=where)
    try:
        inputs = _to_inputs(rid, record, where, image_dir=image_dir, base=base, i2cr=i2cr)
    except InputError as exc:
        return Example(id=rid, inputs=None, gold=gold, error=str(exc), where=where)
    return Example(id=rid, inputs=inputs, gold=gold, where=where)


def _field(record: dict, *names: str) -> Any:
    for name in names:
        if name in record:
            return record[name]
    return None


def _to_inputs(rid: str, record: Any, where: str, *, image_dir: Path | None, base: Path, i2cr: bool) -> dict:
    """The graph input of a record; ``InputError`` naming ``where`` and the field when malformed."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object, got {type(record).__name__}")
    mention = record.get("mention")
    if not isinstance(mention, str) or not mention.strip():
        raise InputError(f"{where}: 'mention' must be a non-empty string (got {mention!r:.80})")
    context = _field(record, "mention_context", "context")
    if context is None:
        context = "" if not i2cr else None
    if not isinstance(context, str):
        raise InputError(f"{where}: '{'mention_context' if i2cr else 'context'}' must be a string "
                         f"(got {type(context).__name__})")
    raw_cands = _field(record, "Candentity", "candidates")
    candidates = None
    dropped: list[str] = []
    if raw_cands is not None:
        candidates = normalize_candidates(raw_cands, where=f"{where}: candidates", dropped=dropped)
        if not candidates:
            candidates = None
    try:
        image_desc = parse_image_desc(_field(record, "mention_imgdesc_Azure", "image_desc"))
    except ValueError as exc:
        raise InputError(f"{where}: image description: {exc}") from None
    image = _find_image(_field(record, "mention_imgpath", "image"), image_dir, base, where=where,
                        strict="image" in record and "mention_imgpath" not in record)
    inputs: dict[str, Any] = {"id": rid, "mention": mention.strip(), "context": context.strip()}
    if candidates:  # with duplicates, the list as given: the graph drops them and records a warning
        inputs["candidates"] = list(raw_cands) if dropped else candidates
    if image_desc:
        inputs["image_desc"] = image_desc
    if image:
        inputs["image"] = image
    return inputs


def _find_image(value: Any, image_dir: Path | None, base: Path, *, where: str, strict: bool) -> str | None:
    """The image file of a record, if it exists.

    ``mention_imgpath`` is looked up under ``--images`` (benchmarks ship images
    apart, so a missing one just means text and precomputed clues only); an
    explicit ``image`` of a plain record is looked for under ``--images``, next
    to the dataset, or as given; when it is in none of them the path is passed on
    anyway, so the graph links the mention on its text and records why the image
    was not used (an error only with ``strict_image``).
    """
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: image path must be a string (got {type(value).__name__})")
    tries = [Path(value)] if Path(value).is_absolute() else []
    if image_dir is not None:
        tries += [image_dir / value, image_dir / Path(value).name]
    if strict and not Path(value).is_absolute():
        tries += [base / value, Path(value)]
    for path in tries:
        if path.is_file():
            return str(path)
    if strict:
        return str(Path(value) if Path(value).is_absolute() else base / value)
    return None
