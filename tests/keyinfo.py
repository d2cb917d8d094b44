"""A `KeyInfo` for unit tests of the police stage, limits and budgets: a key with nothing set, and what a test changes."""

from __future__ import annotations

from dataclasses import replace

from tokensense.gateway.keys import KeyInfo

_PLAIN = KeyInfo(id="k1", name="team", revoked=False, project=None, budget_usd=None, budget_period="total", rpm=None,
                 tpm=None, plan=None, allowed_models=(), allowed_providers=())


def key_info(**changes: object) -> KeyInfo:
    """Key `team` (id `k1`): no project, budget, limits or rules, except `changes` (any KeyInfo field)."""
    return replace(_PLAIN, **changes)  # type: ignore[arg-type]
