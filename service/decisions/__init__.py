"""Turning scores into decisions: the math, the thresholds in force, score normalisation."""
