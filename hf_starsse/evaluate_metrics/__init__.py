"""Local `evaluate` metric modules (load with `hf_starsse.metrics.load_evaluate_metric`; no Hub access needed)."""
