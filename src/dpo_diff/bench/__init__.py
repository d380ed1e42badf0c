"""Benchmarks like the paper's: every method on every prompt at the same budget, resumable, locally or on Ray.

* :mod:`.config`: :class:`~.config.BenchConfig` (what defines a benchmark) and its fingerprint.
* :mod:`.results`: the results folder: ``bench.json`` (config, environment, invocations), ``spaces.json``,
  ``results.jsonl`` (one record per (prompt, method), appended as each job finishes) and ``jobs/`` (images).
* :mod:`.jobs`: one (prompt, method) job: search or baseline, then the before/after evaluation.
* :mod:`.runner`: :func:`~.runner.run_bench`, the driver (local loop or Ray tasks, skipping finished work).
* :mod:`.report` / :mod:`.stats` / :mod:`.html`: tables, curves and the HTML page (no torch needed).

Command line: ``dpo-diff bench`` and ``dpo-diff report``. Importing this package is cheap.
"""
