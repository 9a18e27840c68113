"""Memory planner for VLM RL: `python -m vlmrl.plan` (see vlmrl/plan/cli.py)."""
