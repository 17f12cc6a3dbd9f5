"""Evaluation episodes, run reports and comparisons."""
