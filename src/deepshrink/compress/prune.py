"""Registered compression steps: prune (see SPEC §5)."""
