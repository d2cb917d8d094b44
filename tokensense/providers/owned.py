"""Owned resources: provider objects a client makes through the gateway and then reads, updates or deletes by id
(OpenAI's video jobs, Gemini's context caches), as a provider describes them.

A provider whose API has such objects gives, for the endpoint of the call that makes them, an `OwnedRules`:
where each call goes upstream, which id an answer names, what the request asks for (a video's duration and
size), and what is billable (`Metered`): a job when it is seen finished, or storage for the time a create or an
update asks for. The pipeline (addons/owned.py) keeps each object to the key that made it, and prices what the
rules read with the media price table; it names no provider.

The client routes of these paths carry `owned`, the action (`OWNED_ACTIONS`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from tokensense.core.endpoints import Endpoint

CREATE, READ, LIST, UPDATE, DELETE = "create", "read", "list", "update", "delete"
OWNED_ACTIONS = frozenset({CREATE, READ, LIST, UPDATE, DELETE})


class Metered(NamedTuple):
    """What an answer about an owned resource says is billable.

    A video: `seconds` of video at `size` (priced per second by size). Storage: `tokens` kept for `seconds`
    (priced per million tokens per hour).
    """

    seconds: float
    size: str | None = None
    tokens: int | None = None  # set for storage


class OwnedRules(ABC):
    """One kind of owned resource of one provider."""

    kind: Endpoint  # the endpoint of the call that makes it: its booked records carry it
    job: bool = False  # a job, booked once when an answer shows it finished; else storage, booked per call
    default_model: str | None = None  # the model when the create request names none

    @abstractmethod
    def model_of(self, fields: dict[str, Any]) -> str | None:
        """The model a create request names (its JSON body or form fields)."""

    @abstractmethod
    def upstream_path(self, endpoint: Endpoint, resource: str | None, version: str | None) -> str:
        """The provider's path for a call on `endpoint` (`resource`: the id the client's path named, validated)."""

    @abstractmethod
    def stored_id(self, resource: str) -> str:
        """The id an answer names for the resource a client's path names (`abc` → `cachedContents/abc`)."""

    @abstractmethod
    def resource_id(self, answer: dict[str, Any]) -> str | None:
        """The id a create answer names."""

    @abstractmethod
    def listed(self, answer: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
        """A list answer's (key of the items, items)."""

    @abstractmethod
    def item_id(self, item: dict[str, Any]) -> str | None:
        """The id of one listed item."""

    def requested(self, fields: dict[str, Any]) -> dict[str, Any]:
        """What a create request asks for that its booking needs later (kept with the owner)."""
        return {}

    def expected(self, state: dict[str, Any]) -> Metered | None:
        """A job: what it will book if it completes, from what its create asked (its budget reservation)."""
        return None

    def finished(self, answer: dict[str, Any], state: dict[str, Any]) -> Metered | None:
        """A job: what to book when `answer` shows it finished (None: not finished, or nothing to book)."""
        return None

    def status_path(self, resource_id: str) -> str | None:
        """A job: the provider's path that answers how it is doing (the batch follower polls it with the stored
        provider key until it is booked, for clients that never retrieve it through the gateway); None: not polled."""
        return None

    def ended_unbilled(self, answer: dict[str, Any]) -> bool:
        """A job: `answer` shows it ended with nothing to book (failed, expired): it is no longer polled."""
        return False

    def stored(self, answer: dict[str, Any], state: dict[str, Any] | None) -> tuple[Metered | None, dict[str, Any]]:
        """Storage: what a create (`state` None) or update answer books, and the state to keep."""
        return None, {}


__all__ = ["CREATE", "DELETE", "LIST", "OWNED_ACTIONS", "READ", "UPDATE", "Metered", "OwnedRules"]
