"""Callbacks that observe a run: evaluation, privacy reporting, checkpoints, progress."""
