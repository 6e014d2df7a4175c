"""Metrics shared by training's evaluation and the quantization reports (numpy only)."""
