"""What a graceful restart stores: running jobs handed back without using up an attempt, and replies to resume."""

from __future__ import annotations

from datetime import timedelta

from storage_helpers import LOOP_REQUEST

from generation.storage import (
    GenerationStatus,
    StoredReply,
    create_generation,
    get_generation,
    hand_back_running,
    mark_running,
    recover_interrupted,
    store_replies,
    take_replies,
    utcnow,
)


def test_a_handed_back_job_keeps_its_retry_and_a_crash_still_counts(database) -> None:
    with database.session() as session:
        job_id = create_generation(session, LOOP_REQUEST).short_id
        assert mark_running(session, job_id, "embedded-0.1")
        assert hand_back_running(session, [job_id]) == [job_id]
        row = get_generation(session, job_id)
        assert (row.status, row.attempts, row.worker, row.started_at) == (GenerationStatus.QUEUED, 0, None, None)
        # Stopped gracefully any number of times, it is still retried once after a crash.
        for _ in range(3):
            assert mark_running(session, job_id, "embedded-0.2")
            hand_back_running(session, [job_id])
        assert mark_running(session, job_id, "embedded-0.3")
        assert recover_interrupted(session).requeued == [job_id]
        assert get_generation(session, job_id).attempts == 1
        assert hand_back_running(session, [job_id]) == []  # queued: nothing to hand back


def test_replies_are_taken_once_and_only_while_their_token_lives(database) -> None:
    now = utcnow()
    with database.session() as session:
        young, old = (create_generation(session, LOOP_REQUEST).short_id for _ in range(2))
        store_replies(session, [
            StoredReply(young, 42, "young-secret-token", now - timedelta(minutes=3)),
            StoredReply(old, 42, "old-secret-token", now - timedelta(minutes=15)),
        ])
    with database.session() as session:
        taken = take_replies(session, lifetime_s=14 * 60, now=now)
    assert [(reply.job_id, reply.token) for reply in taken] == [(young, "young-secret-token")]
    assert "secret" not in repr(taken)
    with database.session() as session:
        assert take_replies(session, lifetime_s=14 * 60, now=now) == []  # both rows were deleted
