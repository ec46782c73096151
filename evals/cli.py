"""``i2cr eval`` and ``i2cr report``.

    i2cr eval DATA.json --labels LABELS.json [--images DIR] [--limit N] [--sample N --seed S]
              [--concurrency C] [--set key=value ...] [--retry-errors] --out run/
    i2cr report run/

Re-running the same ``i2cr eval`` command resumes an interrupted run. Mentions
are linked in worker processes (a crash in a model costs one mention); a second
run on the same --out folder is refused while the first one runs. Exit status:
0 when the run ends, 2 on bad input or settings, when every mention failed, or
when the run stopped early because its mentions kept failing for one reason;
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from evals.common import run_main
from graph.context import parse_settings
from tools.errors import I2CRError


def eval_parser() -> argparse.ArgumentParser:
    """Arguments of ``i2cr eval``."""
    p = argparse.ArgumentParser(prog="i2cr eval", description="Run the I2CR graph over a benchmark; resumable.")
    p.add_argument("data", help="dataset: I2CR JSON {id: record} (WikiMEL, RichpediaMEL, WikiDiverse) or JSONL")
    p.add_argument("--labels", help="gold answers {id: entity name | QID | 'nil'} (JSONL records may carry 'gold')")
    p.add_argument("--images", help="folder holding the images named by mention_imgpath")
    p.add_argument("--out", default="run", help="run folder (default: run/)")
    p.add_argument("--limit", type=int, help="run only the first N mentions (after --sample)")
    p.add_argument("--sample", type=int, help="run a random sample of N mentions")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="mentions linked in parallel, one worker process each (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of graph/context.py, e.g. --set linker_model=openai:gpt-4o-mini (repeatable)")
    p.add_argument("--retry-errors", action="store_true", help="on resume, run again the mentions that failed")
    p.add_argument("--fail-fast", type=int, default=5, metavar="N",
                   help="stop when the first N mentions all fail with the same error (default 5; 0 = never)")
    p.add_argument("--max-failure-share", type=float, default=0.5, metavar="F",
                   help="stop when, after 20 mentions, more than this share failed with one error "
                        "(default 0.5; 1 = never)")
    p.add_argument("--mention-timeout", type=float, default=600.0, metavar="S",
                   help="kill and replace a worker that spends more than S seconds on one mention (a hang); "
                        "the mention is tried once more, then recorded as failed (default 600; 0 = no limit)")
    p.add_argument("--in-process", action="store_true",
                   help="link in this process, not in worker processes (no crash isolation; for debugging)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="skip report.md / rounds.png at the end")
    return p


def eval_main(argv: list[str]) -> int:
    """Entry point of ``i2cr eval``; returns the exit code."""
    args = eval_parser().parse_args(argv)
    try:
        from evals.runner import run_eval
        from graph.context import Context

        ctx = Context(**parse_settings(args.set))
        summary = run_eval(args.data, args.labels, args.out, context=ctx, images=args.images, limit=args.limit,
                           sample=args.sample, seed=args.seed, concurrency=args.concurrency,
                           retry_errors=args.retry_errors, progress=not args.no_progress,
                           report=not args.no_report, isolation="inline" if args.in_process else "process",
                           fail_fast=args.fail_fast, mention_timeout=args.mention_timeout,
                           max_failure_share=None if args.max_failure_share == 1 else args.max_failure_share)
    except I2CRError as exc:
        print(f"i2cr eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ni2cr eval: interrupted; every finished mention is saved in {args.out}/predictions.jsonl. "
              "Run the same command again to resume.", file=sys.stderr)
        return 130
    acc = summary["accuracy"]
    print(f"{summary['done']}/{summary['selected']} mentions in {summary['run_dir']} "
          f"({summary['resumed_from']} from before, {summary['written']} now, {summary['errors']} failed); "
          f"Top-1 {'n/a' if acc is None else f'{100 * acc:.1f}%'}")
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if summary.get("report"):
        print(f"report: {summary['report']}")
    if summary.get("stopped"):
        print(f"i2cr eval: error: stopped early: {summary['stopped']}. Fix the cause, then run the same command "
              "with --retry-errors to resume", file=sys.stderr)
        return 2
    if summary.get("all_failed"):
        print(f"i2cr eval: error: every mention failed ({summary['done']} of {summary['selected']}); "
              f"most often: {summary['common_error']}", file=sys.stderr)
        return 2
    return 0


def report_main(argv: list[str]) -> int:
    """Entry point of ``i2cr report``: (re)write report.md and rounds.png of a run folder."""
    p = argparse.ArgumentParser(prog="i2cr report", description="Summarise a run folder of i2cr eval.")
    p.add_argument("run", help="run folder (holding predictions.jsonl and config.json)")
    args = p.parse_args(argv)
    return run_main("i2cr report", _report, args.run)


def _report(run: str) -> int:
    from evals.report import write_report
    from evals.store import read_predictions

    path = write_report(run)
    for note in read_predictions(run)[1]:  # damaged lines: left out of the report, and said so here too
        print(f"note: {note}", file=sys.stderr)
    print(f"report: {path}\nfigure: {path.parent / 'rounds.png'}\npage: {path.parent / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(eval_main(sys.argv[1:]))
