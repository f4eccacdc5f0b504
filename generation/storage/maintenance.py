"""Housekeeping: the retention sweeps (loop audio, uploads), and recovering jobs a dead process left running."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import Generation, GenerationStatus, utcnow
from .repository import mark_failed

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 2
INTERRUPTED_ERROR = "The worker stopped twice while making this loop. Please try again."
UPLOADS_DIR = "uploads"
"""Under the data directory: the files uploaded to `/loopify`, kept until their job ends."""


@dataclass(frozen=True)
class SweepResult:
    cleared: int
    """Rows whose audio path was cleared (the file deleted, or already gone)."""
    skipped: int
    """Rows whose path lies outside the data directory: never deleted, left as they are."""


def sweep_audio(
    session: Session, data_dir: Path, retention_days: float, *, now: datetime | None = None
) -> SweepResult:
    """Delete the audio (its waveform, a mix's stems) of generations finished more than `retention_days` ago; keep their metadata.

    Paths are relative to `data_dir`; a path resolving outside it is never touched. A file that
    is already gone is fine: the sweep is safe to repeat after a crash between delete and commit.
    """
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    root = data_dir.resolve()
    expired: list[tuple[int, str]] = session.execute(  # type: ignore[assignment]  # audio_path is not NULL here
        select(Generation.id, Generation.audio_path).where(
            Generation.audio_path.is_not(None), Generation.finished_at < cutoff
        )
    ).all()
    cleared_ids: list[int] = []
    for generation_id, audio_path in expired:
        path = (root / audio_path).resolve()
        if not path.is_relative_to(root):
            log.warning("not deleting %s: it is outside the data directory", path)
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
            path.with_suffix(".png").unlink(missing_ok=True)  # its waveform, written beside it by the worker
            path.with_suffix(".zip").unlink(missing_ok=True)  # a mix's stems, beside it too (jobs.files.STEMS_SUFFIX)
        cleared_ids.append(generation_id)
    if cleared_ids:
        session.execute(update(Generation).where(Generation.id.in_(cleared_ids)).values(audio_path=None))
    return SweepResult(cleared=len(cleared_ids), skipped=len(expired) - len(cleared_ids))


def delete_upload(data_dir: Path, source_path: str | None) -> bool:
    """Delete a loopify's uploaded file, its job over; True when it was an upload (gone now).

    Only a file directly in the uploads folder is deleted: a path given some other way is not ours.
    """
    if source_path is None:
        return False
    path = Path(source_path).resolve()
    if path.parent != (data_dir / UPLOADS_DIR).resolve():
        return False
    path.unlink(missing_ok=True)
    return True


def sweep_uploads(session: Session, data_dir: Path, retention_days: float, *, now: datetime | None = None) -> int:
    """Delete uploads older than `retention_days` that no waiting or running job reads; returns how many.

    Their jobs' ends delete the others; these are left by a crash between a download and its job.
    """
    folder = (data_dir / UPLOADS_DIR).resolve()
    if not folder.is_dir():
        return 0
    cutoff = ((now or utcnow()) - timedelta(days=retention_days)).timestamp()
    in_use = {
        Path(source_path).resolve()
        for source_path in session.scalars(
            select(Generation.source_path).where(
                Generation.source_path.is_not(None),
                Generation.status.in_([GenerationStatus.QUEUED, GenerationStatus.RUNNING]),
            )
        )
        if source_path is not None
    }
    expired = [path for path in folder.iterdir() if path.is_file() and path.stat().st_mtime < cutoff and path not in in_use]
    for path in expired:
        path.unlink(missing_ok=True)
    return len(expired)


@dataclass(frozen=True)
class RecoveryResult:
    requeued: list[str]
    """Short ids put back in the queue."""
    failed: list[str]
    """Short ids that had used up their attempts: failed, with a delivery queued."""


def recover_interrupted(
    session: Session,
    *,
    worker: str | None = None,
    keep_workers: Collection[str] = (),
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    error: str = INTERRUPTED_ERROR,
) -> RecoveryResult:
    """After a restart: jobs left `running` go back to the queue, or fail once out of attempts.

    `attempts` counts the starts (`mark_running`), so with the default of 2 a job interrupted
    once is retried and a job interrupted again fails with `error`. `worker` limits recovery to
    the jobs of one dead worker, for when others are still alive; `keep_workers` leaves the jobs
    of those running (a distributed backend's batches that outlived the service).
    """
    query = select(Generation).where(Generation.status == GenerationStatus.RUNNING).order_by(Generation.id)
    if worker is not None:
        query = query.where(Generation.worker == worker)
    if keep_workers:
        query = query.where(Generation.worker.not_in(keep_workers))
    requeued: list[str] = []
    failed: list[str] = []
    for generation in session.scalars(query.with_for_update()).all():
        if generation.attempts < max_attempts:
            generation.status = GenerationStatus.QUEUED
            generation.started_at = None
            generation.worker = None
            requeued.append(generation.short_id)
        else:
            mark_failed(session, generation.short_id, error)
            failed.append(generation.short_id)
    session.flush()
    return RecoveryResult(requeued=requeued, failed=failed)


def hand_back_running(session: Session, job_ids: Collection[str]) -> list[str]:
    """A graceful stop: the requests' running rows go back to the queue with their start refunded.

    Unlike `recover_interrupted` (after a crash), a stop is no fault of the job's, so it does not
    use up an attempt. Returns the short ids of the rows handed back.
    """
    rows = session.scalars(
        select(Generation)
        .where(Generation.request_group.in_(job_ids), Generation.status == GenerationStatus.RUNNING)
        .order_by(Generation.id)
        .with_for_update()
    ).all()
    for generation in rows:
        generation.status = GenerationStatus.QUEUED
        generation.attempts = max(0, generation.attempts - 1)
        generation.started_at = None
        generation.worker = None
    session.flush()
    return [generation.short_id for generation in rows]
