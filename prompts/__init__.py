"""Prompt text, and nothing else: the nodes fill these templates."""
