"""Accuracy evaluation: long-text data, RULER-style retrieval tasks and metrics."""
