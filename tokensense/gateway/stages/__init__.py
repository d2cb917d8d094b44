"""The stages of one call, as plain functions over values: admit → parse → police → send → settle.

See docs/architecture.md. Each stage takes the previous stage's value and returns
its own; the addons in `addons/` only move these values between the flow and
the functions.
"""
