"""The queue's front door, without workers: every refusal, exact limits under concurrency, cancel rights."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from queue_helpers import BROKEN_MODEL, migrated_database, tiny_settings

from generation.config import PROMPT_MAX_CHARS
from generation.jobs import (
    Accepted,
    CancelOutcome,
    JobCancelled,
    JobEvent,
    JobKind,
    JobProgress,
    JobRequest,
    QueueService,
    RefusalKind,
    Refused,
    Stage,
)
from generation.jobs.backend import EventSink, Opening, WorkerReady, WorkItem, WorkReturned
from generation.shape import LoopShape
from generation.storage import GenerationStatus, get_generation, upsert_guild_settings

GUILD = 900
EXEMPT_ROLE = 77


@pytest.fixture
def make_service(tmp_path):
    """A service that is never started: submissions are checked and stored, nothing runs."""
    databases = []

    def make(**queue: object) -> QueueService:
        database = migrated_database(tmp_path)
        databases.append(database)
        return QueueService(tiny_settings(tmp_path / "model", tmp_path, **queue), database)

    yield make
    for database in databases:
        database.dispose()


def loop(user_id: int, **changes: object) -> JobRequest:
    fields = {"prompt": "dusty boom bap", "shape": LoopShape(120.0, 1), "guild_id": GUILD, "channel_id": 5, **changes}
    return JobRequest(user_id=user_id, **fields)  # type: ignore[arg-type]


async def test_max_queued_per_user_is_exact_under_concurrency(make_service) -> None:
    service = make_service(max_queued_per_user=3, rate_limit_jobs=100)
    results = await asyncio.gather(*(service.submit(loop(1)) for _ in range(20)))
    accepted = [r for r in results if isinstance(r, Accepted)]
    assert len(accepted) == 3
    assert [r.position for r in accepted] == [1, 2, 3]
    refused = [r for r in results if isinstance(r, Refused)]
    assert {r.reason for r in refused} == {RefusalKind.TOO_MANY_QUEUED}
    assert refused[0].message == "You already have 3 loops waiting; please wait for one to finish before asking for another."


async def test_rate_limit_counts_every_job_in_the_window(make_service) -> None:
    service = make_service(max_queued_per_user=10, rate_limit_jobs=4, rate_limit_window_s=600)
    results = await asyncio.gather(*(service.submit(loop(1)) for _ in range(9)))
    assert sum(isinstance(r, Accepted) for r in results) == 4
    refusal = next(r for r in results if isinstance(r, Refused))
    assert refusal.reason is RefusalKind.RATE_LIMITED
    assert 590 < refusal.retry_after <= 600
    assert refusal.message == "You've made 4 loops recently; you can ask for another in 10 minutes."
    # A job leaving the queue (here: cancelled) does not give its place in the window back.
    accepted = next(r for r in results if isinstance(r, Accepted))
    assert (await service.cancel(accepted.job_id, 1, guild_id=GUILD)).ok
    assert (await service.submit(loop(1))).reason is RefusalKind.RATE_LIMITED


async def test_queue_full_applies_to_everyone_even_exempt_roles(make_service) -> None:
    service = make_service(max_queue=5, max_queued_per_user=1)
    with service.database.session() as session:
        upsert_guild_settings(session, GUILD, exempt_role_ids=[EXEMPT_ROLE])
    results = [await service.submit(loop(user)) for user in range(1, 5)]
    assert all(isinstance(r, Accepted) for r in results)
    # The exempt member skips the per-user limit (two waiting) but not the global cap.
    exempt = [await service.submit(loop(9, role_ids=frozenset({EXEMPT_ROLE}))) for _ in range(2)]
    assert isinstance(exempt[0], Accepted)
    assert exempt[1] == Refused(RefusalKind.QUEUE_FULL, "The queue is full right now. Please try again in a few minutes.")
    assert (await service.submit(loop(10))).reason is RefusalKind.QUEUE_FULL


async def test_guild_overrides_the_global_limits(make_service) -> None:
    service = make_service(rate_limit_jobs=5, max_queued_per_user=5)
    with service.database.session() as session:
        upsert_guild_settings(session, GUILD, rate_limit_jobs=1, max_bars=2, allowed_channel_ids=[5, 6])
    assert isinstance(await service.submit(loop(1)), Accepted)
    assert (await service.submit(loop(1))).reason is RefusalKind.RATE_LIMITED
    # Elsewhere (no guild) the global limit of 5 applies to the same user.
    assert isinstance(await service.submit(loop(1, guild_id=None)), Accepted)
    too_long = await service.submit(loop(2, shape=LoopShape(120.0, 4)))
    assert too_long == Refused(RefusalKind.INVALID, "This server allows loops of at most 2 bars.")
    wrong_channel = await service.submit(loop(2, channel_id=99))
    assert wrong_channel.reason is RefusalKind.INVALID
    assert wrong_channel.message == "Loops are made in <#5>, <#6> on this server."


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "x" * (PROMPT_MAX_CHARS + 1)}, f"The prompt is {PROMPT_MAX_CHARS + 1} characters long; the limit is {PROMPT_MAX_CHARS}."),
        ({"prompt": "   "}, 'The prompt is empty: describe the loop, e.g. "dusty boom bap, vinyl crackle".'),
        ({"shape": LoopShape(400.0, 1)}, "BPM must be between 40 and 240, not 400."),
        ({"shape": LoopShape(120.0, 3)}, "Bars must be one of 1, 2, 4, 8, not 3."),
        ({"model": "facebook/musicgen-huge"}, "The model 'facebook/musicgen-huge' is not available here."),
    ],
)
async def test_invalid_requests_are_refused_with_what_to_change(make_service, changes, message) -> None:
    service = make_service()
    assert await service.submit(loop(1, **changes)) == Refused(RefusalKind.INVALID, message)
    assert (await service.status()).depth == 0


async def test_only_the_owner_can_cancel(make_service) -> None:
    service = make_service()
    accepted = await service.submit(loop(1))
    events = service.subscribe(accepted.job_id)
    refused = await service.cancel(accepted.job_id, user_id=2, guild_id=GUILD)
    assert refused.outcome is CancelOutcome.NOT_OWNER
    assert refused.message == "Only the person who asked for this loop can cancel it."
    # Its owner, in another server: the id names no loop there.
    assert (await service.cancel(accepted.job_id, user_id=1, guild_id=GUILD + 1)).outcome is CancelOutcome.NOT_FOUND
    assert (await service.status()).depth == 1

    assert (await service.cancel(accepted.job_id, user_id=1, guild_id=GUILD)).outcome is CancelOutcome.CANCELLED
    assert events.get_nowait() == JobCancelled(accepted.job_id)
    assert (await service.status()).depth == 0
    with service.database.session() as session:
        assert get_generation(session, accepted.job_id).status is GenerationStatus.CANCELLED
    assert (await service.cancel(accepted.job_id, user_id=1, guild_id=GUILD)).outcome is CancelOutcome.ALREADY_FINISHED
    assert (await service.cancel("nope1234", user_id=1, guild_id=GUILD)).outcome is CancelOutcome.NOT_FOUND


async def test_a_parent_loop_of_another_server_is_unknown_there(make_service) -> None:
    service = make_service()
    parent = await service.submit(loop(1))
    elsewhere = await service.submit(loop(1, guild_id=GUILD + 1, kind=JobKind.REPLAY, parent_loop_id=parent.job_id))
    assert elsewhere == Refused(RefusalKind.INVALID, f"There is no loop with the id {parent.job_id!r}.")
    assert isinstance(await service.submit(loop(1, kind=JobKind.REPLAY, parent_loop_id=parent.job_id)), Accepted)


async def test_fair_positions_interleave_users(make_service) -> None:
    service = make_service(max_queued_per_user=3, rate_limit_jobs=10)
    a = [await service.submit(loop(1)) for _ in range(3)]
    b = [await service.submit(loop(2)) for _ in range(2)]
    c = await service.submit(loop(3, model=BROKEN_MODEL))
    # Served in turns: A1 B1 C1 A2 B2 A3.
    assert [service.position(r.job_id) for r in (a[0], b[0], c, a[1], b[1], a[2])] == [1, 2, 3, 4, 5, 6]
    assert (await service.status()).depth == 6


class OneBusyWorker:
    """A backend whose one worker takes the first batch and never finishes it."""

    stops_its_batches = False

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def start(self, sink: EventSink) -> None:
        sink(WorkerReady("busy", 1, "tiny"))

    async def stop(self) -> None: ...
    def next_batch_key(self) -> str | None: return None if self.batches else "busy"
    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None: self.batches.append([item.job_id for item in batch])
    def cancel(self, job_id: str) -> None: ...
    def workers_alive(self) -> int: return 1
    def running(self) -> int: return len(self.batches)
    def openings(self) -> list[Opening]: return []
    def models(self) -> list[str]: return ["tiny"]
    def resumed(self) -> dict[str, tuple[str, ...]]: return {}


async def test_waiting_jobs_hear_their_new_place_when_a_batch_starts(tmp_path) -> None:
    database = migrated_database(tmp_path)
    backend = OneBusyWorker()
    service = QueueService(tiny_settings(tmp_path / "model", tmp_path, batch_size=1, batch_wait_ms=0), database, backend=backend)
    heard: list[JobEvent] = []
    service.add_listener(heard.append)
    try:
        jobs = [await service.submit(loop(user)) for user in (1, 2, 3)]
        assert [job.position for job in jobs] == [1, 2, 3]
        await service.start()
        for _ in range(100):
            if backend.batches:
                break
            await asyncio.sleep(0.01)
        assert backend.batches == [[jobs[0].job_id]]
        places = {e.job_id: e.position for e in heard if isinstance(e, JobProgress) and e.stage is Stage.QUEUED}
        assert places == {jobs[1].job_id: 1, jobs[2].job_id: 2}  # each moved up one place
    finally:
        await service.stop()
        database.dispose()


class OneDecodingWorker(OneBusyWorker):
    """Busy with its first batch, which jobs of the same join key may join (continuous batching)."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[WorkItem] = []
        self.sink: EventSink | None = None

    async def start(self, sink: EventSink) -> None:
        self.sink = sink
        await super().start(sink)

    def run(self, batch_key: str, batch: Sequence[WorkItem]) -> None:
        super().run(batch_key, batch)
        self.items += batch

    def openings(self) -> list[Opening]:
        keys = {item.join_key for item in self.items}
        key = keys.pop() if len(keys) == 1 else None
        return [] if key is None else [Opening("busy", key, len(self.items))]


async def test_jobs_join_a_decoding_batch_in_turn_and_never_jump_the_line(tmp_path) -> None:
    database = migrated_database(tmp_path)
    backend = OneDecodingWorker()
    service = QueueService(tiny_settings(tmp_path / "model", tmp_path, batch_size=3, batch_wait_ms=0), database, backend=backend)
    await service.start()

    async def settled() -> None:
        for _ in range(20):
            await asyncio.sleep(0.01)

    try:
        first = await service.submit(loop(1))
        await settled()
        longer = await service.submit(loop(2, shape=LoopShape(120.0, 8)))  # another length: not its batch, but it joins
        await settled()
        hotter = await service.submit(loop(3, temperature=0.5))  # other sampling: cannot join
        behind = await service.submit(loop(4))  # could join, but waits behind the head of the line
        await settled()

        assert backend.batches == [[first.job_id], [longer.job_id]]
        assert [service.position(job.job_id) for job in (hotter, behind)] == [1, 2]
        with database.session() as session:
            assert get_generation(session, longer.job_id).status is GenerationStatus.RUNNING
            assert get_generation(session, longer.job_id).worker == "busy"
            assert get_generation(session, behind.job_id).status is GenerationStatus.QUEUED

        # The batch ended before it took the job that joined: it waits again, first in line, its start refunded.
        heard: list[JobEvent] = []
        service.add_listener(heard.append)
        backend.items = []  # no batch left to join, and the worker stays busy
        assert backend.sink is not None
        backend.sink(WorkReturned("busy", (longer.job_id,)))
        await settled()
        with database.session() as session:
            row = get_generation(session, longer.job_id)
            assert (row.status, row.attempts, row.worker) == (GenerationStatus.QUEUED, 0, None)
        assert [service.position(job.job_id) for job in (longer, hotter, behind)] == [1, 2, 3]
        assert JobProgress(longer.job_id, Stage.QUEUED, 0.0, 1) in heard
    finally:
        await service.stop()
        database.dispose()
