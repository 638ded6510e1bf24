"""Frozen-feature evaluation (kNN, linear probe) and backbone export."""
