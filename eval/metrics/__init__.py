"""Local `evaluate` modules: `evaluate.load(metric_path("distinct_n"))` works offline from any directory."""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> str:
    return str(METRICS_DIR / name)


def load_metric(name: str):
    import evaluate

    return evaluate.load(metric_path(name))
