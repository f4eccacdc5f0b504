"""History rows as the queue's jobs: what a worker runs, and what it reported as the history stores it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy.orm import object_session

from ..storage import Generation, GenerationKind, LoopReportFields, get_generation
from .api import Refused
from .backend import MixLayer, ParentLoop, WorkItem
from .fair import QueuedJob


def work_item(rows: Sequence[Generation]) -> WorkItem:
    """A request's rows (one per variation, in order) as the job a worker runs; call it in a session.

    The rows keep every option of the job (the key, a mix's layers), so one rebuilt after a restart
    is the job as asked for.
    """
    first = rows[0]
    return WorkItem(
        job_id=first.short_id, model=first.model, prompt_sent=first.prompt_sent, shape=first.shape,
        temperature=first.temperature, top_k=first.top_k, top_p=first.top_p,
        cfg_coef=first.cfg_coef, loop_ids=tuple(row.short_id for row in rows), seeds=tuple(row.seed for row in rows),
        exact_seed=first.exact_seed, audio_format=first.audio_format, source_audio=first.source_path,
        parent=parent_loop(first.parent) if first.kind is GenerationKind.VARIATION and first.parent else None,
        key=first.target_key, mix=None if first.mix_loop_ids is None else mix_layers(first, first.mix_loop_ids),
    )


def work_items(decisions: Sequence[list[Generation] | Refused]) -> list[WorkItem | Refused]:
    """Admission's decisions with each admitted request's rows as its job; call it in a session."""
    return [work_item(rows) if isinstance(rows, list) else rows for rows in decisions]


def remake(row: Generation) -> WorkItem:
    """A finished loop as the job that makes it again: exactly its seed (a loopify loops its upload, a mix mixes)."""
    return replace(work_item([row]), exact_seed=True)


def parent_loop(parent: Generation) -> ParentLoop:
    """The loop a variation continues: its file while kept, and the parent as an exact-seed job to make it again."""
    return ParentLoop(audio_path=parent.audio_path, remake=remake(parent))


def mix_layers(mix: Generation, loop_ids: Sequence[str]) -> tuple[MixLayer, ...]:
    """A mix's layers (`loop_ids`, its snapshot) as the worker reads them: each one's file while kept, and how
    to make it again. A layer whose row is gone is one with neither (the mix fails naming it)."""
    session = object_session(mix)
    assert session is not None, "call it in a session"
    layers = []
    for loop_id in loop_ids:
        row = get_generation(session, loop_id)
        layers.append(MixLayer(loop_id, loop_id, 0, mix.model, None, None) if row is None else MixLayer(
            loop_id, row.prompt, row.seed, row.model, row.audio_path, remake(row)))
    return tuple(layers)


def queued_jobs(rows: Sequence[Generation]) -> list[QueuedJob]:
    """Rows (ordered by id) as their requests' jobs, in order of each request's first row; call it in a session."""
    groups: dict[str, list[Generation]] = {}
    for row in rows:
        groups.setdefault(row.request_group, []).append(row)
    return [QueuedJob(work_item(group), group[0].user_id) for group in groups.values()]


def report_fields(report: dict[str, object]) -> LoopReportFields:
    """The loop report (`LoopReport.as_dict()`) as the history stores it."""
    names = set(LoopReportFields.__dataclass_fields__) - {"verdict_reason"}
    return LoopReportFields(**{name: report.get(name) for name in names}, verdict_reason=report.get("reason"))  # type: ignore[arg-type]
