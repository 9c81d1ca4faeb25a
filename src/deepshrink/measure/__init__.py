"""Measurement of deployed artifacts: accuracy, size, parameters, MACs, time per image, energy."""
