"""The ``i2cr`` command line: the top layer, importing the others and imported by none.

    i2cr link --mention M --context C | --context-file PATH|- [--image PATH [--strict-image]]
              [--candidates FILE.json] [--set key=value ...]   (--context - reads the context from stdin)
    i2cr kb ingest FILE.jsonl | i2cr kb search "Jordan" --context "..." -k 10 | i2cr kb count
    i2cr eval DATA.json --labels LABELS.json [--sample N --seed S] [--limit N] [--images DIR]
              [--concurrency C] [--set key=value ...] [--retry-errors] --out run/
    i2cr report run/
    i2cr compare run_a/ run_b/ [--out FILE.md]
    i2cr batch MENTIONS.jsonl|.parquet|DATA.json --out OUT/ [--concurrency N] [--address RAY] [--set key=value ...]

Errors print one line (``i2cr: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from graph.context import parse_settings
from tools.candidates import normalize_candidates
from tools.clues.precomputed import parse_image_desc
from tools.errors import I2CRError, InputError
from tools.files import check_input_file, read_json_file

# the top layer: nothing in graph/, nodes/, tools/ or evals/ imports this module
__all__ = ["build_parser", "main", "read_text_arg"]


def read_text_arg(value: str | None, path: str | None) -> str:
    """The context text: ``--context TEXT``, ``--context -`` (stdin) or ``--context-file PATH|-``."""
    if value is not None and path is not None:
        raise InputError("--context and --context-file: give only one of them")
    if value is None and path is None:
        raise InputError("--context: missing; give the text around the mention (--context TEXT, "
                         "--context-file PATH, '-' for stdin, or --context '' when there is none)")
    if path is None and value != "-":
        return value
    what = "--context-file" if path is not None else "--context"
    source = path if path is not None else "-"
    try:
        if source == "-":
            data, where = sys.stdin.buffer.read(), "stdin"
        else:
            data, where = check_input_file(source, what).read_bytes(), source
    except OSError as exc:
        raise InputError(f"{what}: cannot read {source}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what}: {where} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _link(args: argparse.Namespace) -> int:
    from graph import graph
    from graph.context import Context

    settings = parse_settings(args.set or [])
    if args.model:
        settings["linker_model"] = args.model
    if args.strict_image:
        settings["strict_image"] = True
    ctx = Context(**settings)  # a bad setting is reported before stdin or a file is read
    inputs: dict[str, Any] = {"mention": args.mention, "context": read_text_arg(args.context, args.context_file)}
    if args.image:
        inputs["image"] = args.image
    if args.candidates:
        cands = read_json_file(args.candidates, "--candidates")
        if isinstance(cands, dict):  # an I2CR record: take its candidates (and image descriptions)
            if "Candentity" not in cands and "candidates" not in cands:
                raise InputError(f"--candidates: {args.candidates} holds an object without 'Candentity' or 'candidates'")
            if cands.get("mention_imgdesc_Azure") and not args.image_desc:
                inputs["image_desc"] = cands["mention_imgdesc_Azure"]
            cands = cands.get("Candentity", cands.get("candidates"))
        normalize_candidates(cands, where=f"--candidates {args.candidates}: candidates")  # an error names the file
        inputs["candidates"] = [] if cands is None else cands  # given but null: empty, so the trace says so
    if args.image_desc:
        inputs["image_desc"] = read_json_file(args.image_desc, "--image-desc")
        try:
            parse_image_desc(inputs["image_desc"])
        except ValueError as exc:
            raise InputError(f"--image-desc {args.image_desc}: {exc}") from None
    out = graph.invoke(inputs, context=ctx)
    result = {
        "mention": args.mention,
        "entity": None if out["entity"] is None else {k: out["entity"].get(k) for k in ("qid", "name")},
        "status": out["status"],
        "stop_round": out["stop_round"],
        "round1_entity": None if not out.get("round1_entity") else {k: out["round1_entity"].get(k) for k in ("qid", "name")},
        "usage": out.get("usage"),
        "clues": out.get("clues"),
        "warnings": out.get("warnings") or [],
        "trace": out["trace"],
    }
    for warning in result["warnings"]:
        print(f"i2cr: warning: {warning}", file=sys.stderr)
    print(json.dumps(result, indent=None if args.compact else 2, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``i2cr`` parser (``link``; ``kb``, ``eval`` and ``report`` are dispatched before it)."""
    parser = argparse.ArgumentParser(prog="i2cr", description="Multimodal entity linking with I2CR.")
    sub = parser.add_subparsers(dest="command", required=True)
    link = sub.add_parser("link", help="link one mention and print the result as JSON")
    link.add_argument("--mention", required=True)
    link.add_argument("--context", help="text around the mention ('-': read it from stdin; '' when there is none); "
                                        "this or --context-file is required")
    link.add_argument("--context-file", metavar="PATH", help="read the context from a UTF-8 file ('-': stdin); "
                      "for texts over the OS's argument limit (128 KB)")
    link.add_argument("--image", help="image file that goes with the text (an unusable one is dropped with a "
                                      "warning on stderr and the mention is linked on its text)")
    link.add_argument("--strict-image", action="store_true",
                      help="an unusable --image is an error (exit 2) instead of a warning")
    link.add_argument("--candidates", help="JSON file: a list of {qid, name, desc}, or an I2CR record")
    link.add_argument("--image-desc", help="JSON file with precomputed image descriptions (Azure format)")
    link.add_argument("--model", help="linker model spec (shortcut for --set linker_model=...)")
    link.add_argument("--set", action="append", metavar="KEY=VALUE", help="any setting of graph/context.py")
    link.add_argument("--compact", action="store_true", help="print one line of JSON")
    for name, help_ in (("kb", "knowledge base: ingest, search"), ("eval", "run a benchmark"),
                        ("report", "summarise a benchmark run folder"), ("compare", "compare two run folders"),
                        ("batch", "link a corpus on Ray Data (resumable)"),
                        ("fit", "refit the fused weights on labelled data")):
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``i2cr`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "kb":
            from graph.context import Context
            from tools.kb_cli import main as kb_main

            return kb_main(argv[1:], Context)
        if argv and argv[0] == "batch":
            from evals.batch import main as batch_main

            return batch_main(argv[1:])
        if argv and argv[0] == "compare":
            from evals.compare import main as compare_main

            return compare_main(argv[1:])
        if argv and argv[0] == "fit":
            from evals.fit import main as fit_main

            return fit_main(argv[1:])
        if argv and argv[0] in ("eval", "report"):
            from evals import cli as eval_cli

            return (eval_cli.eval_main if argv[0] == "eval" else eval_cli.report_main)(argv[1:])
        args = build_parser().parse_args(argv)
        return _link(args)
    except I2CRError as exc:
        print(f"i2cr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("i2cr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
