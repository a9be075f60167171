"""Tracing, metrics and logging set-up; imports nothing of ours (see DESIGN.md)."""
