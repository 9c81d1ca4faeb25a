"""Registered compression steps: quantize (see SPEC §5)."""
