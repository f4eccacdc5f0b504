"""The history and job state: SQLAlchemy models, units of work, Alembic migrations.

Importable without torch and without discord: the bot uses it directly. `Session` is
SQLAlchemy's, named here so that the queue (`generation.jobs`) can type its units of work
without importing SQLAlchemy; the queue's own queries are in `storage.queue`.
"""

from sqlalchemy.orm import Session

from . import queue
from .database import Database, database_url, is_unavailable, redact
from .maintenance import (
    UPLOADS_DIR,
    RecoveryResult,
    SweepResult,
    delete_upload,
    hand_back_running,
    recover_interrupted,
    sweep_audio,
    sweep_uploads,
)
from .models import Base, Delivery, Generation, GenerationKind, GenerationStatus, GuildSettings, InteractionReply, utcnow
from .replies import StoredReply, store_replies, take_replies
from .repository import (
    MAX_DELIVERY_ATTEMPTS,
    DeliveryFailure,
    GuildSettingsChanges,
    LoopReportFields,
    NewGeneration,
    count_queued,
    create_generation,
    create_generations,
    create_request_groups,
    due_deliveries,
    get_generation,
    get_guild_generation,
    get_guild_settings,
    has_pending_delivery,
    list_history,
    list_request_group,
    mark_cancelled,
    mark_delivered,
    mark_done,
    mark_failed,
    mark_request_delivered,
    mark_running,
    new_short_id,
    record_delivery_failure,
    record_request_delivery_failure,
    upsert_guild_settings,
)

__all__ = [
    "MAX_DELIVERY_ATTEMPTS", "UPLOADS_DIR", "Base", "Database", "Delivery", "DeliveryFailure", "Generation", "GenerationKind",
    "GenerationStatus", "GuildSettings", "GuildSettingsChanges", "InteractionReply", "LoopReportFields", "NewGeneration",
    "RecoveryResult", "Session", "StoredReply", "SweepResult", "count_queued", "create_generation", "create_generations",
    "create_request_groups", "database_url", "delete_upload", "due_deliveries", "get_generation", "get_guild_generation",
    "get_guild_settings", "hand_back_running",
    "has_pending_delivery", "is_unavailable", "list_history", "list_request_group", "mark_cancelled", "mark_delivered",
    "mark_done", "mark_failed", "mark_request_delivered", "mark_running", "new_short_id", "queue", "record_delivery_failure",
    "record_request_delivery_failure", "recover_interrupted", "redact", "store_replies", "sweep_audio", "sweep_uploads", "take_replies",
    "upsert_guild_settings", "utcnow",
]
