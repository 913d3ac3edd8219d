"""Airies against Pipecat: per-turn overhead with the same injected latencies, measured side by side in one run.

``make bench-pipecat`` (docs/benchmarks.md). Four processes on 127.0.0.1, each started and stopped by its PID:
``fake_llm.py`` (one OpenAI-compatible SSE server for both), ``pipecat_driver.py`` (Pipecat's environment),
``airies_driver.py`` (the project's, with its moto server child) and the orchestrator (``__main__.py``), which runs
blocks of turns alternately on the two systems so that they share the machine's noise; ``analysis.py`` turns the
rows into p50 / p95 / max per context size and the ratio. Not a ``bench_*`` module: ``make bench`` does not run it
(it needs Pipecat's environment).
"""
