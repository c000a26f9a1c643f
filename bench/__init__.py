"""Benchmarks: run one with `python -m bench.<name>`; results land in bench/results/."""
