"""Synthetic multi-domain organ benchmark (numpy/scipy generator, see generator.py)."""
