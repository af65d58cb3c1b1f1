"""Metrics, calibration, the one result row and the shared plots: what every report shows."""
