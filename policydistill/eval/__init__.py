"""Rollouts, metrics, videos and reports."""
