"""Analysis report over a recorded event log: `python -m vlmrl.analyze RUN.jsonl --out DIR`.

Reads the log with numpy only (no JAX); figures need the `report` extra (matplotlib).
"""
