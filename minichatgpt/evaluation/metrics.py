"""The evaluation's metrics as local `evaluate` modules (the folders of eval/metrics in the repository, which
`pip install -e .` leaves in place): `evaluate.load(metric_path("distinct_n"))` works offline from any directory."""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parents[2] / "eval" / "metrics"


def metric_path(name: str) -> str:
    return str(METRICS_DIR / name)


def load_metric(name: str):
    import evaluate

    return evaluate.load(metric_path(name))
