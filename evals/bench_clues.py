"""Latency of the visual clue tools and verifiers on ~640x480 images, on this machine's CPU.

For each tool: *cold* = first call in a fresh process (model loading included,
imports excluded), *warm* = median of ``--repeat`` further calls with the
per-image caches cleared (what each new image costs). Wall time and the
process's CPU time (all threads) are both reported: on a shared machine the
CPU time is the steadier figure. Images: a generated
640x480 picture (a poster with text over a drawn outdoor scene) plus any
``--images``; matplotlib's and scikit-learn's sample photos are added when
those packages are installed.

    python -m evals.bench_clues [--repeat 3] [--images a.jpg b.png] [--json out.json]
    python -m evals.bench_clues --clip DIR_OR_ID --detector DIR_OR_ID --captioner DIR_OR_ID   # optional models

Defaults are the offline ones (``rapidocr``, ``embedded`` objects/scene/caption
and verifier, with ``embedding_model='embedded'``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evals.common import defaults, run_main


def generated_image(folder: Path) -> str:
    """A 640x480 JPEG: sky, field, a house and a banner reading 'NATO SUMMIT 2024'."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (640, 480), (110, 170, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 300, 640, 480), fill=(60, 150, 60))
    draw.rectangle((380, 200, 560, 330), fill=(150, 150, 150))
    draw.polygon([(370, 200), (470, 130), (570, 200)], fill=(120, 50, 40))
    draw.rectangle((40, 40, 600, 130), fill="white")
    draw.text((60, 50), "NATO SUMMIT 2024", fill="black", font=ImageFont.load_default(size=64))
    path = folder / "generated_640x480.jpg"
    img.save(path, quality=92)
    return str(path)


def sample_photos() -> list[str]:
    """Real photos shipped by installed packages (Grace Hopper portrait, a temple, a flower)."""
    found = []
    try:
        from matplotlib import cbook

        found.append(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    except Exception:
        pass
    try:
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        found += [str(folder / n) for n in ("china.jpg", "flower.jpg") if (folder / n).is_file()]
    except Exception:
        pass
    return found


def clear_image_caches() -> None:
    """Forget per-image results so a warm call pays for the image again (models stay loaded)."""
    from tools.clues import imagenet

    imagenet._classify_cached.cache_clear()


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of this process (all threads) and the result of ``fn()``."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def bench(name: str, fn: Callable[[str], Any], images: list[str], repeat: int) -> dict[str, Any]:
    """Cold time on the first image, then warm times over every image ``repeat`` times."""
    cold, cold_cpu, result = timed(lambda: fn(images[0]))
    warm, warm_cpu, outputs = [], [], {}
    for _ in range(repeat):
        for image in images:
            clear_image_caches()
            seconds, cpu, result = timed(lambda: fn(image))
            warm.append(seconds)
            warm_cpu.append(cpu)
            outputs[Path(image).name] = getattr(result, "text", result)
    return {"tool": name, "cold_s": round(cold, 3), "cold_cpu_s": round(cold_cpu, 3),
            "warm_median_s": round(statistics.median(warm), 3), "warm_max_s": round(max(warm), 3),
            "warm_median_cpu_s": round(statistics.median(warm_cpu), 3), "calls": len(warm), "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    """Time each clue tool and verifier on the images; print the table (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", nargs="*", default=[])
    parser.add_argument("--clip", help="CLIP hub id or local dir for the clip verifier and scene tool")
    parser.add_argument("--detector", help="transformers detector for object_model 'huggingface:...'")
    parser.add_argument("--captioner", help="transformers captioner for caption_model 'huggingface:...'")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    load = os.getloadavg()
    t0 = time.perf_counter()
    import torch  # noqa: F401  (import cost reported apart from the tools)

    from tools.clues import caption, objects, ocr, scene
    from tools.verify import TextEmbeddingScorer

    import_s = time.perf_counter() - t0
    folder = Path(tempfile.mkdtemp(prefix="i2cr_bench_clues_"))
    images = [generated_image(folder), *sample_photos(), *args.images]
    ctx = defaults().model_copy(update={"use_precomputed_clues": False, "max_retries": 1})
    entity = {"name": "NATO", "desc": "North Atlantic Treaty Organization, intergovernmental military alliance"}

    rows = [
        bench("ocr (rapidocr)", lambda p: ocr.extract(p, ctx, {}), images, args.repeat),
        bench("objects (embedded: haar + efficientnet-lite0)", lambda p: objects.extract(p, ctx, {}), images, args.repeat),
        bench("scene (embedded heuristic)", lambda p: scene.extract(p, ctx, {}), images, args.repeat),
        bench("caption (embedded, composed; other clues run inside)", lambda p: caption.extract(p, ctx, {}),
              images, args.repeat),
        bench("verify (embedded: all clues + MiniLM cosine)",
              lambda p: TextEmbeddingScorer().score(entity, image=p, image_desc=None, ctx=ctx), images, args.repeat),
    ]
    if args.clip:
        from tools.verifiers.clip import ClipScorer

        clip_ctx = ctx.model_copy(update={"scene_model": f"clip:{args.clip}"})
        rows.append(bench(f"scene (clip:{args.clip})", lambda p: scene.extract(p, clip_ctx, {}), images, args.repeat))
        rows.append(bench(f"verify (clip:{args.clip})",
                          lambda p: ClipScorer(args.clip).score(entity, image=p, image_desc=None, ctx=ctx),
                          images, args.repeat))
    if args.detector:
        det_ctx = ctx.model_copy(update={"object_model": f"huggingface:{args.detector}"})
        rows.append(bench(f"objects (huggingface:{args.detector})", lambda p: objects.extract(p, det_ctx, {}),
                          images, args.repeat))
    if args.captioner:
        cap_ctx = ctx.model_copy(update={"caption_model": f"huggingface:{args.captioner}"})
        rows.append(bench(f"caption (huggingface:{args.captioner})", lambda p: caption.extract(p, cap_ctx, {}),
                          images, args.repeat))

    result = {"load_average": load, "images": images, "import_s": round(import_s, 3), "repeat": args.repeat, "rows": rows,
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(f"images: {len(images)} ({', '.join(Path(i).name for i in images)}); imports {import_s:.2f} s; "
          f"peak RSS {result['peak_rss_mib']} MiB\n")
    print(f"load average before the run: {load[0]:.1f} on {os.cpu_count()} cores\n")
    print("| tool | cold wall (first call, loads models) | warm wall median | warm wall max | warm CPU median |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['tool']} | {row['cold_s']:.2f} s | {row['warm_median_s']:.2f} s | {row['warm_max_s']:.2f} s "
              f"| {row['warm_median_cpu_s']:.2f} s |")
    print()
    for row in rows:
        for image, text in row["outputs"].items():
            print(f"{row['tool'][:20]:20s} {image:24s} {text!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(run_main("bench_clues", main))
