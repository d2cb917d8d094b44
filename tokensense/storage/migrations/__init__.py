"""Alembic migrations of the TokenSense schema; `versions/NNNN_name.py` holds one revision, named by its id.

The facts about them that start-up needs (the newest revision) are in `tokensense/storage/schema.py`.
"""
