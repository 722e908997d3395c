"""Evaluation: availability patterns, metrics, statistics, tables and figures."""
