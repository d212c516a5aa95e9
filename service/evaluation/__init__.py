"""Measuring the service: accuracy on labelled audio (`voicesearch eval`) and calibration."""
