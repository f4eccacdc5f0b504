"""Interaction replies kept across a graceful restart (see `models.InteractionReply`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .models import InteractionReply, utcnow


@dataclass(frozen=True)
class StoredReply:
    """What edits a request's original reply: the webhook (application id, token) and the token's age."""

    job_id: str
    application_id: int
    token: str = field(repr=False)
    """A secret: never logged (left out of `repr`)."""
    created_at: datetime


def store_replies(session: Session, replies: Iterable[StoredReply]) -> None:
    """Keep the replies of the requests still waiting or running, for the next start to resume."""
    for reply in replies:
        session.merge(InteractionReply(
            job_id=reply.job_id, application_id=reply.application_id, token=reply.token, created_at=reply.created_at
        ))


def take_replies(session: Session, lifetime_s: float, *, now: datetime | None = None) -> list[StoredReply]:
    """Delete every stored reply and return those whose token is younger than `lifetime_s` seconds."""
    rows = session.scalars(select(InteractionReply).order_by(InteractionReply.created_at)).all()
    oldest = (now or utcnow()) - timedelta(seconds=lifetime_s)
    young = [
        StoredReply(row.job_id, row.application_id, row.token, row.created_at) for row in rows if row.created_at > oldest
    ]
    session.execute(delete(InteractionReply))
    return young
