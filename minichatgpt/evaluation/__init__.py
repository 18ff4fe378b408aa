"""The evaluation's parts: local `evaluate` metrics, statistics, relevance judges, comparisons of policies and the
report."""
