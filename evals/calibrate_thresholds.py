"""Where do α (reflection) and τ (offline verification) separate right from wrong entities?

Prints, for a seeded sample of an I2CR-format dataset, the distribution of
cosine(mention+context, entity) and cosine(image description text, entity) for
the gold entity and for the other candidates, and the pass rates at a range of
thresholds, for the configured embedder (default: the embedded all-MiniLM-L6-v2).

    python -m evals.calibrate_thresholds --sample 300 --seed 0     # WikiMEL dev of the shared data folder
    python -m evals.calibrate_thresholds --data DATA.json [--labels LABELS.json]

``--data`` defaults to WikiMEL dev under ``$I2CR_DATA_DIR`` (else ``../shared/data``), ``--labels`` to the
``<data>_label.json`` beside it, ``--embedding-model`` to the ``embedding_model`` setting (``evals/common.py``).
"""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np

from evals.common import default_labels, defaults, run_main, wikimel_dev
from evals.datasets import load_dataset
from evals.metrics import match
from tools.clues.precomputed import describe_all
from tools.embeddings import get_embedder
from tools.errors import InputError
from tools.texts import entity_ref, entity_text, query_text


def main(argv: list[str] | None = None) -> int:
    """Print the cosine distributions and pass rates of the sample."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="I2CR-format dataset (default: WikiMEL dev of the shared data)")
    ap.add_argument("--labels", default=None, help="gold labels (default: <data>_label.json beside --data)")
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embedding-model", default=None, help="default: the embedding_model setting")
    args = ap.parse_args(argv)
    data_path = args.data or str(wikimel_dev())
    labels_path = args.labels or default_labels(data_path)
    if labels_path is None:
        raise InputError(f"--labels: not given, and no {data_path.removesuffix('.json')}_label.json beside --data")
    examples = sorted((ex for ex in load_dataset(data_path, labels_path).examples if ex.inputs and ex.gold),
                      key=lambda ex: ex.id)
    random.Random(args.seed).shuffle(examples)
    ctx = defaults()
    embedder = get_embedder(args.embedding_model or ctx.embedding_model, base_url=ctx.openai_base_url,
                            api_key=ctx.openai_api_key)
    refl = {"gold": [], "other": []}
    veri = {"gold": [], "other": []}
    top1 = {"text": 0, "image": 0}
    n = 0
    for ex in examples[: args.sample]:
        cands = ex.inputs["candidates"]
        gold = next((j for j, c in enumerate(cands) if match(entity_ref(c), ex.gold)), None)
        if gold is None:
            continue
        n += 1
        texts = [entity_text(c) for c in cands]
        r = embedder.cosine(query_text(ex.inputs["mention"], ex.inputs["context"]), texts)
        v = embedder.cosine(describe_all(ex.inputs.get("image_desc") or {}), texts)
        for scores, bucket, key in ((r, refl, "text"), (v, veri, "image")):
            bucket["gold"].append(scores[gold])
            bucket["other"] += [s for j, s in enumerate(scores) if j != gold]
            top1[key] += int(int(np.argmax(scores)) == gold)
    if not n:
        raise InputError(f"--labels: no mention of the sample of {data_path} has its gold among its candidates")
    pct = lambda a: [round(float(np.percentile(a, p)), 3) for p in (10, 25, 50, 75, 90)]  # noqa: E731
    if not n:
        raise InputError(f"--labels: no mention of the sample of {data_path} has its gold among its candidates")
    print(f"mentions with gold among candidates: {n}; top-1 by text cosine {top1['text'] / n:.3f}, "
          f"by image-text cosine {top1['image'] / n:.3f}")
    for name, bucket, grid in (("reflection (alpha)", refl, (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)),
                               ("verification (tau)", veri, (0.1, 0.15, 0.2, 0.25, 0.3))):
        print(f"{name}: percentiles 10/25/50/75/90 gold {pct(bucket['gold'])} other {pct(bucket['other'])}")
        for t in grid:
            print(f"  {t:.2f}: gold pass {np.mean(np.array(bucket['gold']) >= t):.3f}  "
                  f"other pass {np.mean(np.array(bucket['other']) >= t):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("calibrate_thresholds", main))
