"""Metrics, calibration, statistics and plots."""
