"""Saved flows: recording with keys redacted, replay, reprice."""
