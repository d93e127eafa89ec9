"""Evaluation: baselines, the predictions frame, calibration, explanations and the predictor."""
