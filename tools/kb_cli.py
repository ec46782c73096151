"""``i2cr kb`` — fill and query the entity knowledge base (``tools/kb.py``).

    i2cr kb ingest entities.jsonl [--on-error skip|fail] [--batch-size 256]
    i2cr kb search "Jordan" --context "... scored 30 points ..." [-k 10] [--json]
    i2cr kb count

Store options (default: the ``I2CR_KB_*`` / ``I2CR_EMBEDDING_MODEL`` settings of
``graph/context.py``): ``--path DIR`` (embedded Chroma) or ``--host H --port P``
(a Chroma server), ``--collection NAME``, ``--embedding-model SPEC``.

The settings reach this module from its caller (``graph/cli.py`` passes ``Context``):
tools/ import nothing from graph/. ``python -m tools.kb_cli ...`` is ``i2cr kb ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from tools.errors import I2CRError, InputError


def _parser() -> argparse.ArgumentParser:
    store = argparse.ArgumentParser(add_help=False)
    g = store.add_argument_group("knowledge base")
    g.add_argument("--path", help="Chroma persistent directory (default: kb_path, else the user data dir)")
    g.add_argument("--host", help="Chroma server host (use a server instead of --path)")
    g.add_argument("--port", type=int, help="Chroma server port (default: kb_port, 8000)")
    g.add_argument("--collection", help="collection name (default: kb_collection, 'entities')")
    g.add_argument("--embedding-model", help="'embedded', 'huggingface:<id|path>', 'onnx:embedded|<path>', "
                   "'onnx-int8:embedded|<path>' or 'openai:<model>' "
                   "(default: embedding_model); must match the one the KB was built with")
    p = argparse.ArgumentParser(prog="i2cr kb", description="Fill and query the entity knowledge base.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{ingest,search,count}")
    ing = sub.add_parser("ingest", parents=[store], help="add/update entities from a JSONL file",
                         description="Add or update entities from FILE.jsonl: one {qid, name, desc, "
                         "aliases?, image?} object per line. Unchanged records are skipped; re-running "
                         "after an interruption continues where it stopped.")
    ing.add_argument("file", help="JSONL file of entity records")
    ing.add_argument("--batch-size", type=int, default=256, help="records embedded and written per batch (256)")
    ing.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                     help="malformed line: report and skip it (default), or fail before writing anything")
    ing.add_argument("--no-progress", action="store_true", help="no progress bar")
    ing.add_argument("--json", action="store_true", help="print the summary as JSON")
    se = sub.add_parser("search", parents=[store], help="rank KB entities for a mention",
                        description="Rank KB entities for MENTION (hybrid: name trigrams + dense context).")
    se.add_argument("mention")
    se.add_argument("--context", default="", help="sentence around the mention")
    se.add_argument("-k", type=int, default=None, help="how many candidates (default: top_k, 10)")
    se.add_argument("--mode", choices=("hybrid", "dense", "lexical"), default="hybrid",
                    help="ranking signal(s) (default hybrid)")
    se.add_argument("--json", action="store_true", help="print JSON instead of a table")
    co = sub.add_parser("count", parents=[store], help="number of entities stored")
    co.add_argument("--json", action="store_true")
    return p


def _open(a: argparse.Namespace, settings: Callable[[], Any]) -> tuple[Any, Any]:
    """The KnowledgeBase the options (else the run's settings) point to, and the settings."""
    from tools.kb import KnowledgeBase

    ctx = settings()
    return KnowledgeBase(
        path=a.path or ctx.kb_path, host=a.host or (None if a.path else ctx.kb_host),
        port=a.port or ctx.kb_port, collection=a.collection or ctx.kb_collection,
        embeddings=a.embedding_model or ctx.embedding_model,
        base_url=ctx.openai_base_url, api_key=ctx.openai_api_key), ctx


def main(argv: list[str] | None, settings: Callable[[], Any]) -> int:
    """Run ``i2cr kb`` with ``argv``; return the exit code (0 ok, 130 interrupted).

    ``settings()`` returns the run's settings (``graph.context.Context``: ``kb_*``, ``embedding_model``,
    ``openai_*``, ``top_k``); it is called once the arguments are parsed. Errors (``I2CRError``)
    propagate to the caller (``graph.cli.main`` prints them in one line and exits 2).
    """
    a = _parser().parse_args(argv)
    if a.command == "search" and a.k is not None and a.k < 1:
        raise InputError(f"kb search -k {a.k}: expected a positive number of candidates")
    if a.command == "ingest" and a.batch_size < 1:
        raise InputError(f"kb ingest --batch-size {a.batch_size}: expected a positive integer")
    try:
        kb, ctx = _open(a, settings)
        if a.command == "ingest":
            def report(no: int, msg: str) -> None:
                print(f"{a.file}:{no}: skipped: {msg}", file=sys.stderr)

            stats = kb.ingest_file(a.file, batch_size=a.batch_size, on_error=a.on_error,
                                   progress=not a.no_progress, report=report)
            dup = stats.duplicates_note(a.file)
            if dup:
                print(f"{a.file}: warning: {dup}", file=sys.stderr)
            if a.json:
                print(json.dumps({**stats.as_dict(), "count": kb.count()}, ensure_ascii=False))
            else:
                print(f"{stats.added} added, {stats.updated} updated, {stats.unchanged} unchanged, "
                      f"{stats.skipped} skipped, {stats.duplicates} duplicate qid(s); "
                      f"{kb.count()} entities in '{kb.collection_name}' at {kb.where}")
        elif a.command == "search":
            rows = kb.search(a.mention, a.context, k=ctx.top_k if a.k is None else a.k, mode=a.mode)
            if a.json:
                print(json.dumps(rows, ensure_ascii=False, indent=1))
            else:
                for r in rows:
                    desc = r["desc"] if len(r["desc"]) <= 70 else r["desc"][:67] + "..."
                    print(f"{r['rank']:>3}  {r['score']:.4f}  {r['qid']:<12} {r['name']}  "
                          f"(lexical {r['lexical']:.2f}, dense {r['dense']:.2f})  {desc}")
        else:
            n = kb.count()
            print(json.dumps({"count": n}) if a.json else n)
        return 0
    except KeyboardInterrupt:
        print("interrupted; batches already written are kept — re-run to continue", file=sys.stderr)
        return 130


def run(argv: list[str], settings: Callable[[], Any]) -> int:
    """:func:`main`, with an ``I2CRError`` printed as one line ``i2cr kb: error: ...`` (exit 2)."""
    try:
        return main(argv, settings)
    except I2CRError as exc:
        print(f"i2cr kb: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # a program, above every layer: it may take the settings from graph/
    from graph.context import Context

    sys.exit(run(sys.argv[1:], Context))
