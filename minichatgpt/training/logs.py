"""What a trainer logged, as numbers, tables and plots for a model card."""

import math
from pathlib import Path


def perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 50 else float("inf")


def last_logged(log_history: list[dict], key: str, default: float | None = None) -> float | None:
    """The last value a trainer logged under `key`, or `default` when it logged none."""
    values = [row[key] for row in log_history if key in row]
    return values[-1] if values else default


def metrics_table(metrics: dict) -> str:
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def plot_curves(log_history: list[dict], series: dict[str, str], path: Path, title: str) -> Path | None:
    """Plot logged values (`series` maps a log key to its label) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for key, label in series.items():
        points = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
