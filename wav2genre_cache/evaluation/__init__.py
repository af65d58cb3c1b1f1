"""Metrics with intervals, calibration and plots: what every report shows."""
