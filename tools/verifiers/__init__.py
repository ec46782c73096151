"""Image-entity scorers beyond the embedded default (see ``tools/verify.py``).

* ``clip.py`` — ``ClipScorer``: a CLIP-family model through transformers.
* ``judge.py`` — ``JudgeScorer``: a vision-capable chat model as judge.
"""
