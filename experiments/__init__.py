"""Experiment configs (`--config=experiments/five_domain.py`) and the paper-comparison scripts."""
