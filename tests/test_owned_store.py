"""The owned-resources store: ownership, and the one-time booking claim of a job under concurrent claimers."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlmodel import Session, SQLModel, create_engine

from tokensense.gateway.owned_jobs import job_kinds
from tokensense.storage.owned import claim_booking, open_jobs, owned, owned_ids, remember_owned


def test_a_job_is_claimed_for_booking_exactly_once_by_concurrent_claimers(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'owned.db'}", connect_args={"timeout": 30})
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        remember_owned(session=session, resource_id="video_1", kind="videos", key_id="k1", provider="openai",
                       model="sora-2", attribution={"workflow": "w"}, state={"seconds": 8})
        # the first owner keeps an id: a second remember (another key) changes nothing
        again = remember_owned(session=session, resource_id="video_1", kind="videos", key_id="k2",
                               provider="openai", model="sora-2", attribution=None, state=None)
        assert again.key_id == "k1" and again.state == {"seconds": 8}
        assert owned_ids(session=session, key_id="k1", ids=["video_1", "video_2"]) == {"video_1"}
        assert owned_ids(session=session, key_id="k2", ids=["video_1"]) == set()
    wins: list[bool] = []
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        with Session(engine) as session:  # each claimer its own connection, as separate instances would have
            wins.append(claim_booking(session=session, resource_id="video_1"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]
    with Session(engine) as session:
        found = owned(session=session, resource_id="video_1")
        assert found is not None and found.booked
        assert claim_booking(session=session, resource_id="video_1") is False  # after a restart too
    engine.dispose()


def test_the_follower_polls_only_unbooked_jobs_of_job_kinds(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'owned.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        for resource, kind in (("video_a", "videos"), ("video_b", "videos"), ("cachedContents/c", "cached_contents")):
            remember_owned(session=session, resource_id=resource, kind=kind, key_id="k1", provider="openai",
                           model=None, attribution=None, state=None)
        assert claim_booking(session=session, resource_id="video_b")
        assert [job.id for job in open_jobs(session=session, kinds=["videos"])] == ["video_a"]
        assert open_jobs(session=session, kinds=[]) == []
    assert job_kinds() == ["videos"]  # the built-in providers' jobs: OpenAI's videos (a cache is not a job)
