"""Where do α (reflection) and τ (offline verification) separate right from wrong entities?

Prints, for a seeded sample of an I2CR-format dataset, the distribution of
cosine(mention+context, entity) and cosine(image description text, entity) for
the gold entity and for the other candidates, and the pass rates at a range of
thresholds, for the configured embedder (default: the embedded all-MiniLM-L6-v2).

    python -m evals.calibrate_thresholds --data ../shared/data/wikimel/WikiMEL_dev.json \
        --labels ../shared/data/wikimel/WikiMEL_dev_label.json --sample 300 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np

from tools.clues.precomputed import describe_all, parse_image_desc
from tools.embeddings import get_embedder
from tools.texts import entity_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--sample", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embedding-model", default="embedded")
    args = ap.parse_args()
    data, labels = json.load(open(args.data)), json.load(open(args.labels))
    ids = sorted(data)
    random.Random(args.seed).shuffle(ids)
    embedder = get_embedder(args.embedding_model)
    refl = {"gold": [], "other": []}
    veri = {"gold": [], "other": []}
    top1 = {"text": 0, "image": 0}
    n = 0
    for i in ids[: args.sample]:
        rec = data[i]
        names = [c["name"] for c in rec["Candentity"]]
        if labels.get(i) not in names:
            continue
        n += 1
        gold = names.index(labels[i])
        texts = [entity_text(c) for c in rec["Candentity"]]
        r = embedder.cosine(f"{rec['mention']}. {rec['mention_context']}", texts)
        v = embedder.cosine(describe_all(parse_image_desc(rec.get("mention_imgdesc_Azure")) or {}), texts)
        for scores, bucket, key in ((r, refl, "text"), (v, veri, "image")):
            bucket["gold"].append(scores[gold])
            bucket["other"] += [s for j, s in enumerate(scores) if j != gold]
            top1[key] += int(int(np.argmax(scores)) == gold)
    pct = lambda a: [round(float(np.percentile(a, p)), 3) for p in (10, 25, 50, 75, 90)]  # noqa: E731
    print(f"mentions with gold among candidates: {n}; top-1 by text cosine {top1['text'] / n:.3f}, "
          f"by image-text cosine {top1['image'] / n:.3f}")
    for name, bucket, grid in (("reflection (alpha)", refl, (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)),
                               ("verification (tau)", veri, (0.1, 0.15, 0.2, 0.25, 0.3))):
        print(f"{name}: percentiles 10/25/50/75/90 gold {pct(bucket['gold'])} other {pct(bucket['other'])}")
        for t in grid:
            print(f"  {t:.2f}: gold pass {np.mean(np.array(bucket['gold']) >= t):.3f}  "
                  f"other pass {np.mean(np.array(bucket['other']) >= t):.3f}")


if __name__ == "__main__":
    main()
