"""Evaluation: `python eval/run.py --config <recipe>` and local `evaluate` metrics under eval/metrics/."""
