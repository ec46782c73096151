"""Evaluation harness of the I2CR graph.

* ``evals/datasets.py`` — loaders of the benchmark formats (WikiMEL, RichpediaMEL,
  WikiDiverse, plain JSONL) into graph inputs and gold answers;
* ``evals/runner.py`` — a resumable, concurrent run writing ``predictions.jsonl``;
* ``evals/metrics.py`` — Top-1 with Wilson intervals, per-round accuracy, exits, cost;
* ``evals/report.py`` / ``evals/plot.py`` — ``report.md`` and ``rounds.png`` of a run folder;
* ``evals/cli.py`` — ``i2cr eval`` and ``i2cr report``.
"""
