"""Baselines the paper compares DPO-Diff with (besides the user's own prompt): :mod:`.promptist`."""
