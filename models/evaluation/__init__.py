"""Evaluation: task metrics, slices and calibration, the adaptation gain (base vs adapted encoder), plots."""
