"""Registered compression steps: distill (see SPEC §5)."""
