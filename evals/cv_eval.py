"""A cross-validated harness run of the fused linker: no mention is linked with weights fitted on it.

    python -m evals.cv_eval                                   # WikiMEL dev, 5 folds -> runs/wikimel-cv
    python -m evals.cv_eval DATA.json --labels L.json --folds 5 --out runs/x [--set key=value ...]

1. features of every labelled mention once; for each fold k, weights fitted on the
   other folds (``OUT/weights/fold<k>.json``, the split of ``evals/fit_fusion.py``),
   with the LLM weight ``evals/fit_llm_weight.py`` fitted on the other folds
   (read from ``--llm-weights``' ``fit.llm.fold_weights``);
2. the fold's records written as a dataset in the input format (``OUT/data/``);
3. ``i2cr eval`` of each fold with ``fusion_weights`` = its own fold's weights
   (``OUT/fold<k>/``, resumable like any run: rerun the command after a kill);
4. the folds' predictions merged into ``OUT/all/`` with its report (``report.md``, ``rounds.png``).

Accuracy figures from the packaged weights on the data they were fitted on are
in-sample; this is the figure to quote for the dev split.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from evals.fit_fusion import DATA, build_matrix, fold_of, fold_weights
from evals.report import write_report
from evals.runner import run_eval
from graph.context import parse_settings
from tools.errors import I2CRError, InputError
from tools.files import read_json_file
from tools.fusion import PACKAGED_WEIGHTS, load_weights


def llm_fold_weights(path: str, folds: int) -> tuple[list, float | None]:
    """Each fold's ``llm_weight`` from a weights file's ``fit.llm`` (fitted without that fold), and its ``llm_floor``."""
    data = read_json_file(path, "--llm-weights")
    data = data if isinstance(data, dict) else {}
    floor = data.get("llm_floor")
    fit = data.get("fit") if isinstance(data.get("fit"), dict) else {}
    fit = fit.get("llm") if isinstance(fit.get("llm"), dict) else {}  # a note or an absent record: no fold weights
    base = data.get("llm_weight", 1.0)
    per = fit.get("fold_weights")
    if not isinstance(per, list) or len(per) != folds or fit.get("folds") != folds:
        print(f"cv_eval: {path} has no {folds}-fold LLM weights (run evals/fit_llm_weight.py); every fold uses "
              f"llm_weight {base!r}, which is then not cross-validated", file=sys.stderr)
        return [base] * folds, floor
    method = fit.get("method", "likelihood")
    base = base if isinstance(base, dict) else {"likelihood": base, "choice": base}
    return [{**base, method: w} for w in per], floor


def main(argv: list[str] | None = None) -> int:
    """Run the cross-validated harness and print where its report is; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=str(DATA / "WikiMEL_dev.json"))
    p.add_argument("--labels", default=None)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--out", default="runs/wikimel-cv")
    p.add_argument("--llm-weights", default=str(PACKAGED_WEIGHTS),
                   help="weights file whose fit.llm.fold_weights (from evals/fit_llm_weight.py) give each fold's "
                        "LLM weight (default: the packaged file)")
    p.add_argument("--fold-weights", default=None, metavar="DIR",
                   help="each fold's weights from `i2cr fit --fold-weights DIR` (DIR/fold<k>.json: fitted on the "
                        "training mix without the fold; folds by mention id as i2cr fit makes them) instead of "
                        "fitting WikiMEL-only fold weights here")
    p.add_argument("--report-only", action="store_true",
                   help="link nothing: merge the folds' predictions written so far and report them")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a graph setting (repeatable)")
    a = p.parse_args(argv)
    if a.folds < 2:
        p.error(f"--folds: expected at least 2, got {a.folds}")
    labels = a.labels or (str(DATA / "WikiMEL_dev_label.json") if a.data == str(DATA / "WikiMEL_dev.json") else None)
    if not labels:
        raise SystemExit("cv_eval: --labels is required")
    settings = parse_settings(a.set)
    raw = read_json_file(a.data, "dataset")
    gold_raw = read_json_file(labels, "--labels")
    if not isinstance(raw, dict) or not isinstance(gold_raw, dict):
        raise InputError("cv_eval: expects the I2CR JSON format ({id: record}) with a {id: gold} labels file")
    out = Path(a.out)
    (out / "weights").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    wfiles = [out / "weights" / f"fold{k}.json" for k in range(a.folds)]
    dfiles = [out / "data" / f"fold{k}.json" for k in range(a.folds)]
    if a.fold_weights:
        given = [Path(a.fold_weights) / f"fold{k}.json" for k in range(a.folds)]
        missing = [str(f) for f in given if not f.is_file()]
        if missing:
            raise InputError(f"cv_eval: --fold-weights: missing {', '.join(missing)} (written by "
                             f"`i2cr fit ... --folds {a.folds} --fold-weights {a.fold_weights}`)")
    if not all(f.is_file() for f in wfiles + dfiles):
        if a.fold_weights:
            from evals.fit import fold_of_id

            ids_all = [str(k) for k in raw]
            fold = [fold_of_id(r, a.folds) for r in ids_all]
            m = {"ids": ids_all}
        else:
            per_fold, floor = llm_fold_weights(a.llm_weights, a.folds)
            m = build_matrix(a.data, labels, settings.get("embedding_model", "embedded"))
            fold = fold_of(len(m["X"]), a.folds)
        for k in range(a.folds):
            if a.fold_weights:
                load_weights(str(given[k]))  # checked before any linking
                shutil.copy(given[k], wfiles[k])
            else:
                weights = {**fold_weights(m["X"], m["gold"], fold, k, a.C, llm_weight=per_fold[k]), "llm_floor": floor}
                wfiles[k].write_text(json.dumps(weights, indent=1) + "\n")
            ids = {m["ids"][i] for i in range(len(m["ids"])) if fold[i] == k}
            dfiles[k].write_text(json.dumps({key: rec for key, rec in raw.items() if str(key) in ids}))
            (out / "data" / f"fold{k}_label.json").write_text(
                json.dumps({key: g for key, g in gold_raw.items() if str(key) in ids}))
    merged: list[str] = []
    complete: list[int] = []
    for k in range(a.folds):
        if not a.report_only:
            print(f"fold {k + 1}/{a.folds}", file=sys.stderr, flush=True)
            run_eval(dfiles[k], out / "data" / f"fold{k}_label.json", out / f"fold{k}",
                     context={**settings, "fusion_weights": str(wfiles[k].resolve())}, report=False)
        done = out / f"fold{k}" / "predictions.jsonl"
        lines = [line for line in done.read_text().splitlines() if line.strip()] if done.is_file() else []
        if len({json.loads(x)["id"] for x in lines}) >= len(json.loads(dfiles[k].read_text())):
            merged += lines  # only whole folds: a fold's file order is not a random sample
            complete.append(k)
        elif lines:
            print(f"fold {k}: {len(lines)} mentions done, left out until the fold is complete", file=sys.stderr)
    if not merged:
        raise SystemExit(f"cv_eval: no predictions under {out} yet")
    everything = out / "all"
    everything.mkdir(exist_ok=True)
    config = json.loads((out / "fold0" / "config.json").read_text())
    folds_done = len(complete)
    config.update(dataset=str(Path(a.data).resolve()), labels=str(Path(labels).resolve()),
                  selected=len(merged),
                  note=f"{a.folds}-fold cross-validated: each fold linked with fusion weights fitted on the others "
                       f"({folds_done} complete fold(s): {complete}, {len(merged)} mentions)")
    (everything / "config.json").write_text(json.dumps(config, indent=1))
    (everything / "predictions.jsonl").write_text("\n".join(merged) + "\n")
    report = write_report(everything)
    print(f"report: {report}", file=sys.stderr)
    shutil.copy(report, out / "report.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except I2CRError as exc:  # bad data, labels or settings: one line naming them
        sys.exit(f"cv_eval: error: {exc}")
