"""Does a served GGUF score candidate names as the embedded one does? (issue #16: the served LLM's weight)

    python -m evals.check_served_llm                      # the embedded Qwen GGUF, 8 WikiMEL dev mentions
    python -m evals.check_served_llm --n 4 --model PATH.gguf

Starts llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``, the embedded
GGUF of :func:`tools.embedded_llm.embedded_gguf_path` or ``--model``) on a free 127.0.0.1 port,
and for ``--n`` seeded mentions of ``--data`` (two or more candidates) scores every candidate's
name and the nil answer with the graph's likelihood prompt (:func:`tools.fused_linker.name_messages`,
first round: no clues) twice: in process (:func:`tools.llama_cpp_chat.load_llama_cpp_chat_model` on
the same file) and through the server (``openai:`` spec, :func:`tools.choice.name_likelihoods`, the
route the probe chose). Printed and written to ``--out`` (JSON): the probe, the largest absolute
difference between the two scores of a name, the same for the evidence the fused linker adds
(``llm_weight["likelihood"]`` times the log-probabilities relative to the favourite, floored at
``llm_floor``, of the packaged weights), whether the favourite is the same name, and the seconds
per call of each.

llama.cpp's CPU kernels do not give bit-equal logits for one token sequence evaluated in batches
of different shapes (the in-process scorer evaluates the names together, the server one token at
a time), so the figures are also given for the in-process model against itself: its batched
scorer against its sequential one (:meth:`continuation_logprobs_sequential`), the floor any
route can be held to.

If the scores are equal, the packaged ``llm_weight["likelihood"]`` (fitted on the embedded model)
applies to the served model unchanged. For another server model, fit its own weight:
``i2cr fit DATA.json --labels LABELS.json --linker-model openai:NAME --set
openai_base_url=http://HOST:PORT/v1`` (or
``python -m evals.fit_llm_weight`` with the same flags).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from evals.bench_servers import Server, free_port, llm_command, sample_mentions
from evals.common import run_main, wikimel_dev

OUT = Path(__file__).resolve().parent / "results" / "served_llm_check.json"


def fmt(c: dict[str, Any]) -> str:
    """One comparison (:func:`main`'s ``compare``) on one line."""
    return f"|diff| {c['max_abs_diff']:.3f} (evidence {c['max_evidence_diff']:.3f}{'' if c['same_favourite'] else ', other favourite'})"


def worst(rows: list[dict], which: str, key: str) -> float | None:
    """The largest ``key`` of comparison ``which`` over the mentions."""
    return max((r[which][key] for r in rows), default=None)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m evals.check_served_llm", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="dataset (default: WikiMEL dev in the shared data folder)")
    p.add_argument("--n", type=int, default=8, help="mentions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="GGUF file (default: the embedded model's)")
    p.add_argument("--n-threads", type=int, default=2, help="the server's threads (and the in-process model's)")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--out", default=str(OUT))
    return p


def main(argv: list[str] | None = None) -> int:
    """Score the names both ways, print and write the figures; 1 when the server cannot score given text."""
    import os

    a = parser().parse_args(argv)
    os.environ.setdefault("I2CR_LLAMA_THREADS", str(a.n_threads))
    from prompts.linking import NIL_ANSWER
    from tools import choice
    from tools.embedded_llm import embedded_gguf_path
    from tools.fused_linker import name_messages
    from tools.fusion import PACKAGED_WEIGHTS, load_weights
    from tools.llama_cpp_chat import load_llama_cpp_chat_model
    from tools.models import load_chat_model
    from tools.names import display_name

    weights = load_weights(PACKAGED_WEIGHTS)
    weight = weights.llm_weight_for("likelihood")

    def compare(want: list[float], got: list[float]) -> dict[str, Any]:
        """Largest differences of the scores and of the evidence the fused linker adds; same favourite?"""
        ev = [weight * weights.llm_evidence(np.asarray(x[:-1])) for x in (want, got)]  # the names; nil apart
        return {"max_abs_diff": float(np.max(np.abs(np.subtract(want, got)))),
                "max_evidence_diff": float(np.max(np.abs(ev[0] - ev[1]))),
                "same_favourite": bool(np.argmax(want) == np.argmax(got))}

    gguf = Path(a.model) if a.model else embedded_gguf_path()
    mentions = sample_mentions(Path(a.data) if a.data else wikimel_dev(), a.n, a.seed)
    local = load_llama_cpp_chat_model(gguf, model_name="embedded", temperature=0.0, max_tokens=8)
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    cmd = llm_command(gguf, port, n_threads=a.n_threads, n_ctx=a.n_ctx, alias="served")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, Server("llama_cpp.server", cmd, f"{base}/models",
                                                       Path(tmp) / "llm.log", timeout=600):
        remote = load_chat_model("openai:served", base_url=base, api_key="none", max_tokens=8)
        t0 = time.perf_counter()
        probe = choice.server_probe(remote)
        probe_s = time.perf_counter() - t0
        print(f"probe ({probe_s:.1f} s): {probe}", flush=True)
        if not probe.echo_ok:
            print("the server cannot score given text: nothing to compare", file=sys.stderr)
        for m in mentions if probe.echo_ok else []:
            names = [display_name(c["name"]) for c in m["candidates"]] + [NIL_ANSWER]
            messages = name_messages(m["mention"], m.get("context") or "", [])
            t0 = time.perf_counter()
            want, _ = choice.name_likelihoods(local, messages, names, spec="embedded")
            t1 = time.perf_counter()
            got, call = choice.name_likelihoods(remote, messages, names, spec="openai:served")
            t2 = time.perf_counter()
            seq = [sum(x) for x in local.continuation_logprobs_sequential(
                messages, [choice.answer_text(n) for n in names])[0]]
            row = {"mention": m["mention"], "names": names, "in_process": want, "served_scores": got,
                   "in_process_sequential": seq, "in_process_s": t1 - t0, "served_s": t2 - t1,
                   "route": call.get("route"), "served_input_tokens": call.get("input_tokens"),
                   "served": compare(want, got), "in_process_self": compare(want, seq)}
            rows.append(row)
            print(f"{m['mention'][:24]:24s} {len(names):2d} names  served: {fmt(row['served'])}  "
                  f"in-process self: {fmt(row['in_process_self'])}  in-process {t1 - t0:5.2f} s  "
                  f"served {t2 - t1:6.2f} s", flush=True)
    summary = {"gguf": str(gguf), "n_threads": a.n_threads, "n_ctx": a.n_ctx, "mentions": len(rows),
               "probe": {"echo_ok": probe.echo_ok, "offset": probe.offset, "template": probe.template,
                         "reason": probe.reason, "seconds": probe_s},
               "weight": weight, "llm_floor": weights.llm_floor,
               **{f"{which}_{k}": worst(rows, which, k) for which in ("served", "in_process_self")
                  for k in ("max_abs_diff", "max_evidence_diff")},
               **{f"{which}_same_favourite": sum(r[which]["same_favourite"] for r in rows)
                  for which in ("served", "in_process_self")},
               "in_process_s_per_call": sum(r["in_process_s"] for r in rows) / len(rows) if rows else None,
               "served_s_per_call": sum(r["served_s"] for r in rows) / len(rows) if rows else None}
    print(json.dumps({k: v for k, v in summary.items() if k != "probe"}, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({**summary, "rows": rows}, indent=1) + "\n")
    print(f"written to {a.out}", file=sys.stderr)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(run_main("check_served_llm", main))
