"""Putting a trained run on trial: metrics with intervals, explanations, forensic tests."""
