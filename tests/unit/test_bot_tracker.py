"""The progress shown in a job's reply: throttled edits that never move the bar back."""

from __future__ import annotations

import asyncio
import typing as tp

import pytest

from bot import tracker
from bot.tracker import JobTracker, TrackedJob
from generation.jobs.api import JobProgress, Stage


class RecordedReply:
    """Stands in for the interaction whose original response the tracker edits."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, str]] = []

    async def edit_original_response(self, **fields: tp.Any) -> None:
        embed = fields["embed"]
        self.shown.append((embed.title, embed.fields[0].value if embed.fields else ""))


async def test_events_arriving_late_never_move_the_bar_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker, "EDIT_INTERVAL_S", 0.0)
    jobs, reply = JobTracker(), RecordedReply()
    jobs.track(TrackedJob("job12345", "“dub” · 120 BPM", tp.cast(tp.Any, reply)))
    heard = [(Stage.QUEUED, 0.0), (Stage.GENERATING, 40.0), (Stage.GENERATING, 20.0), (Stage.GENERATING, 60.0),
             (Stage.LOOPING, 0.0), (Stage.RETRYING, 30.0), (Stage.RETRYING, 10.0), (Stage.GENERATING, 95.0),
             (Stage.RETRYING, 55.0), (Stage.QUEUED, 0.0), (Stage.GENERATING, 5.0)]
    for stage, percent in heard:
        jobs.on_progress(JobProgress("job12345", stage, percent, position=1 if stage is Stage.QUEUED else None))
        if (task := jobs.jobs["job12345"].edit_task) is not None:
            await task
    assert reply.shown == [
        ("Queued, position 1", ""),
        ("Generating", "`████████░░░░░░░░░░░░ 40%`"),
        ("Generating", "`████████████░░░░░░░░ 60%`"),
        ("Cutting the loop", "`░░░░░░░░░░░░░░░░░░░░ 0%`"),
        ("Trying again for a cleaner loop", "`██████░░░░░░░░░░░░░░ 30%`"),
        ("Generating", "`███████████████████░ 95%`"),
        ("Trying again for a cleaner loop", "`███████████░░░░░░░░░ 55%`"),
        ("Queued, position 1", ""),  # back in the queue (its worker died): the work starts over
        ("Generating", "`█░░░░░░░░░░░░░░░░░░░ 5%`"),
    ]


class InFlight:
    now = 0
    most = 0


class SlowReply(RecordedReply):
    """An edit that takes a while, counted in `in_flight` while it is sent."""

    def __init__(self, in_flight: InFlight) -> None:
        super().__init__()
        self.in_flight = in_flight

    async def edit_original_response(self, **fields: tp.Any) -> None:
        self.in_flight.now += 1
        self.in_flight.most = max(self.in_flight.most, self.in_flight.now)
        await asyncio.sleep(0.01)
        await super().edit_original_response(**fields)
        self.in_flight.now -= 1


async def test_a_hundred_positions_changing_at_once_are_shown_a_few_edits_at_a_time() -> None:
    jobs, in_flight = JobTracker(), InFlight()
    replies = [SlowReply(in_flight) for _ in range(100)]
    for number, reply in enumerate(replies):
        jobs.track(TrackedJob(f"job{number:05d}", "“dub” · 120 BPM", tp.cast(tp.Any, reply)))
    for number in range(100):  # a batch started: every waiting job moved up one place
        jobs.on_progress(JobProgress(f"job{number:05d}", Stage.QUEUED, 0.0, position=number + 1))
    await asyncio.gather(*(job.edit_task for job in jobs.jobs.values() if job.edit_task is not None))
    assert [reply.shown for reply in replies] == [[(f"Queued, position {n + 1}", "")] for n in range(100)]
    assert in_flight.most == tracker.EDITS_IN_FLIGHT  # all of them at once stalled the event loop
