"""Jam sessions in the history, on SQLite and PostgreSQL: one per channel, layers that fit, ending, filters."""

from __future__ import annotations

from datetime import timedelta

from storage_helpers import loop_request

from generation.shape import LoopShape
from generation.storage import (
    MAX_LAYERS,
    Database,
    GenerationStatus,
    LayerOutcome,
    LoopReportFields,
    NewJam,
    add_layer,
    create_generation,
    end_jam,
    get_jam,
    idle_jams,
    list_history,
    mark_done,
    mark_running,
    remove_layer,
    running_jam,
    start_jam,
    utcnow,
)

JAM = NewJam(guild_id=10, channel_id=20, started_by=1, shape=LoopShape(92, 4), key="A minor")


def finished_loop(session, shape: LoopShape = JAM.shape, **changes):
    row = create_generation(session, loop_request(guild_id=10, channel_id=20, shape=shape, **changes))
    mark_running(session, row.short_id, "w")
    mark_done(session, row.short_id, audio_path=f"loops/{row.short_id}.wav", report=LoopReportFields(source_key="C major"))
    return row


def test_one_jam_per_channel_and_a_new_one_once_it_ended(database: Database) -> None:
    with database.session() as session:
        jam = start_jam(session, JAM)
        assert jam is not None and start_jam(session, JAM) is None
        assert start_jam(session, NewJam(10, 21, 2, LoopShape(120, 2), None)) is not None  # another channel
        end_jam(session, jam, "stopped")
        assert running_jam(session, 20) is None
        again = start_jam(session, JAM)
        assert again is not None and again.id != jam.id
        assert get_jam(session, jam.id, 10).end_reason == "stopped"
        assert get_jam(session, jam.id, 11) is None  # another server's jam reads as unknown


def test_layers_fit_the_jam_and_stop_at_eight(database: Database) -> None:
    with database.session() as session:
        jam = start_jam(session, JAM)
        loops = [finished_loop(session) for _ in range(MAX_LAYERS + 1)]
        waiting = create_generation(session, loop_request(shape=JAM.shape))
        slower = finished_loop(session, LoopShape(91, 4))
        in_three = finished_loop(session, LoopShape(92, 4, 3))
        assert add_layer(session, jam, waiting, 1) is LayerOutcome.NOT_FINISHED
        assert add_layer(session, jam, slower, 1) is LayerOutcome.OTHER_SHAPE
        assert add_layer(session, jam, in_three, 1) is LayerOutcome.OTHER_SHAPE
        assert [add_layer(session, jam, loop, 2) for loop in loops[:MAX_LAYERS]] == [LayerOutcome.ADDED] * MAX_LAYERS
        assert add_layer(session, jam, loops[0], 2) is LayerOutcome.ALREADY_IN
        assert add_layer(session, jam, loops[-1], 2) is LayerOutcome.FULL
        assert add_layer(session, jam, loops[-1], 2, replacing=MAX_LAYERS + 1) is LayerOutcome.NO_SUCH_LAYER
        assert add_layer(session, jam, loops[-1], 3, replacing=2) is LayerOutcome.REPLACED
        jam_id = jam.id
    with database.session() as session:
        jam = running_jam(session, 20)
        assert jam.id == jam_id
        ids = [layer.generation.short_id for layer in jam.layers]
        assert ids == [loops[0].short_id, *(loop.short_id for loop in loops[2:MAX_LAYERS]), loops[-1].short_id]
        removed = remove_layer(session, jam, 1)
        assert removed is not None and removed.generation.short_id == loops[0].short_id
        assert remove_layer(session, jam, MAX_LAYERS) is None
    with database.session() as session:
        assert len(running_jam(session, 20).layers) == MAX_LAYERS - 1
        assert list_history(session, guild_id=10, limit=50)[0].status is GenerationStatus.DONE  # the loops stay


def test_idle_jams_are_the_ones_untouched_for_long(database: Database) -> None:
    with database.session() as session:
        old = start_jam(session, JAM)
        old.last_active_at = utcnow() - timedelta(hours=25)
        fresh = start_jam(session, NewJam(10, 21, 2, LoopShape(120, 2), None))
        session.flush()
        assert [jam.id for jam in idle_jams(session, utcnow() - timedelta(hours=24))] == [old.id]
        add_layer(session, old, finished_loop(session), 1)  # a new layer wakes it
        assert idle_jams(session, utcnow() - timedelta(hours=24)) == []
        assert fresh.ended_at is None


def test_history_filters_by_jam_tempo_and_key(database: Database) -> None:
    with database.session() as session:
        jam = start_jam(session, JAM)
        in_jam = finished_loop(session, jam_id=jam.id)
        other = finished_loop(session, LoopShape(120, 4))
        moved = finished_loop(session)
        moved.target_key, moved.key_shift_semitones = "A minor", 3
        session.flush()
        assert [row.short_id for row in list_history(session, jam_id=jam.id)] == [in_jam.short_id]
        assert {row.short_id for row in list_history(session, bpm=120)} == {other.short_id}
        assert {row.short_id for row in list_history(session, key="A minor")} == {moved.short_id}
        assert {row.short_id for row in list_history(session, key="C major")} == {in_jam.short_id, other.short_id}
