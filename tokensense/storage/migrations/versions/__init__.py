"""Revision scripts, one per file, named after the revision id (`0002_limits.py` is revision `0002_limits`)."""
