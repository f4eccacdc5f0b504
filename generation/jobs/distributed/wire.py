"""What travels through Redis between the bot-side `SaqBackend` and `loopjam worker`.

One saq job per batch, calling `RUN_BATCH` with the work items as JSON. Its result holds the
backend events the batch runner emitted (as JSON) and every file it wrote, keyed by its path
relative to the data directory; WAV files travel as lossless FLAC (about half the bytes) and are
written back as WAV on the bot machine, so the events' paths hold there unchanged. JSON rather
than pickle: whoever can write to Redis must not be able to run code on the bot or the workers.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import io
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from ...music import UnknownKey, parse_key
from ...storage import MAX_LAYERS, LoopReportFields
from ..backend import BackendEvent, MixLayer, ModelUnavailable, ParentLoop, WorkDone, WorkFailed, WorkItem
from ..files import AUDIO_SUFFIXES, STEMS_SUFFIX, WAVEFORM_SUFFIX, UnsafeFile, checked_id, inside, is_loop_file

RUN_BATCH = "run_batch"
"""The saq function name of a batch."""
DEFAULT_QUEUE = "loopjam"
RESULT_TTL_S = 3 * 24 * 3600
"""How long a finished batch waits in Redis for the bot to collect it (the bot may be down)."""
COLLECTED_TTL_S = 3600
"""How long a collected batch stays (without its audio): a bot restarting meanwhile replays its events."""
BEAT_S = 0.5
"""How often a worker touches its running job (saq's heartbeat) and reports progress."""
WORKER_INFO_S = 2
"""How often a worker refreshes its saq worker info: the bot counts it alive for one period more."""
SWEEP_S = 5
"""How often abandoned jobs are looked for (saq's sweep, by the workers and the bot)."""
SHUTDOWN_GRACE_S = 60.0
"""On SIGTERM a worker's running batch may finish for this long (`loopjam worker --stop-grace`); then it goes back to the queue."""

RESULT_EVENTS: dict[str, type[BackendEvent]] = {cls.__name__: cls for cls in (WorkDone, WorkFailed, ModelUnavailable)}
"""The batch runner's events that travel in a result; progress travels in the job's `meta`."""
LOSSLESS_WAV = ("PCM_16", "PCM_24")
MAX_REASON = 500
"""The longest failure reason a result may give (users read it)."""

T = TypeVar("T")


def cancel_key(queue_name: str, job_id: str) -> str:
    """Set by the bot when a job is cancelled; read by the worker running it."""
    return f"loopjam:{queue_name}:cancel:{job_id}"


def finished_key(queue_name: str, batch_key: str) -> str:
    """The list of the running batch `batch_key`'s jobs that are done, each entry a result (`check_result`)
    of the jobs finished since the last: a job's loops travel as soon as it is done, not when its
    batch is (continuous batching keeps a batch running while jobs join it)."""
    return f"loopjam:{queue_name}:finished:{batch_key}"


def joins_key(queue_name: str, batch_key: str) -> str:
    """The list of jobs the bot sent to join the running batch `batch_key` (continuous batching), in
    the order sent, each entry `{"items": [...], "inputs": {...}}` as a batch's kwargs are. The worker
    running the batch reads it from where it left off; the bot keeps it as its record of the batch."""
    return f"loopjam:{queue_name}:joins:{batch_key}"


# --- dataclasses as JSON ---------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A (nested) dataclass as plain JSON values."""
    return dataclasses.asdict(value)


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """The dataclass `cls` from `to_json`'s output, nested dataclasses, tuples and enums included."""
    hints = typing.get_type_hints(cls)
    return cls(**{field.name: _decode(hints[field.name], data[field.name])
                  for field in dataclasses.fields(cls) if field.name in data})  # type: ignore[arg-type]


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _decode(next(arg for arg in args if arg is not type(None)), value)
    if origin is tuple:
        return tuple(_decode(args[0], item) for item in value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_json(hint, value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    return value


def encode_items(items: typing.Sequence[WorkItem]) -> list[dict[str, Any]]:
    return [to_json(item) for item in items]


class RogueItem(ValueError):
    """A work item from Redis that the bot would never queue: its whole batch is refused."""


def decode_items(data: list[dict[str, Any]]) -> tuple[WorkItem, ...]:
    """The batch's work items, each checked (`checked_item`); `RogueItem` says what is wrong with one."""
    try:
        return tuple(checked_item(from_json(WorkItem, item)) for item in data)
    except RogueItem:
        raise
    except Exception as error:  # missing or extra fields, wrong shapes
        raise RogueItem(f"malformed work item: {str(error)[:200]}") from None


def checked_item(item: WorkItem) -> WorkItem:
    """`item` when every field the worker acts on is one the bot would send; `RogueItem` otherwise.

    Ids name files, so they are ids; a key is a key (`music.parse_key`); a mix has 1 to `MAX_LAYERS`
    layers, each kept file its own loop's file under the data directory. Whatever a job makes again
    (a parent, a layer) is checked the same way. Paths are never opened as named: see `with_local_inputs`.
    """
    try:
        for loop_id in (item.job_id, *item.loop_ids):
            checked_id(loop_id)
        if item.key is not None:
            parse_key(item.key)
    except (UnsafeFile, UnknownKey, TypeError, AttributeError) as error:
        raise RogueItem(f"work item {str(item.job_id)[:80]!r}: {error}") from None
    _expect_item(isinstance(item.loop_ids, tuple) and len(item.loop_ids) == len(item.seeds) >= 1, item, "loops and seeds differ")
    if item.parent is not None and item.parent.remake is not None:
        checked_item(item.parent.remake)
    if item.mix is not None:
        _expect_item(1 <= len(item.mix) <= MAX_LAYERS, item, f"a mix of {len(item.mix)} layers")
        for layer in item.mix:
            _checked_layer(item, layer)
    return item


def _checked_layer(item: WorkItem, layer: MixLayer) -> None:
    try:
        checked_id(layer.loop_id)
    except UnsafeFile as error:
        raise RogueItem(f"work item {item.job_id!r}: {error}") from None
    _expect_item(layer.audio_path is None or is_loop_file(layer.audio_path, layer.loop_id, AUDIO_SUFFIXES), item,
                 f"layer {layer.loop_id}'s audio is not its loop file: {str(layer.audio_path)[:200]!r}")
    _expect_item(isinstance(layer.prompt, str) and isinstance(layer.model, str) and isinstance(layer.seed, int), item,
                 f"malformed layer {layer.loop_id}")
    if layer.remake is not None:
        checked_item(layer.remake)


def _expect_item(condition: bool, item: WorkItem, problem: str) -> None:
    if not condition:
        raise RogueItem(f"work item {item.job_id!r}: {problem}")


def encode_event(event: BackendEvent) -> dict[str, Any]:
    return {"type": type(event).__name__, "data": to_json(event)}


def decode_event(data: dict[str, Any]) -> BackendEvent:
    return from_json(RESULT_EVENTS[data["type"]], data["data"])


WORKER_STAGES = ("generating", "retrying", "looping")
"""The stages a worker reports (`pipeline.StageCallback`)."""


def progress_meta(progress: dict[str, tuple[str, float]]) -> dict[str, Any]:
    """A running batch's saq `meta`: each job's latest progress (its jobs' differ once jobs join it)."""
    return {"progress": {job_id: [stage, percent] for job_id, (stage, percent) in progress.items()}} if progress else {}


def reported_progress(meta_progress: Any, job_ids: typing.Sequence[str]) -> dict[str, tuple[str, float]]:
    """The progress a worker put in a running batch's meta, by job id: only the batch's jobs, known
    stages and percentages. A worker from before continuous batching reports one for the whole batch."""
    if isinstance(meta_progress, list):
        meta_progress = dict.fromkeys(job_ids, meta_progress)
    if not isinstance(meta_progress, dict):
        return {}
    return {
        job_id: (stage, float(percent)) for job_id in job_ids
        if isinstance(reported := meta_progress.get(job_id), list) and len(reported) == 2
        and (stage := reported[0]) in WORKER_STAGES
        and isinstance(percent := reported[1], (int, float)) and 0.0 <= percent <= 100.0
    }


# --- files ------------------------------------------------------------------------------------


def pack_files(root: Path) -> dict[str, dict[str, str]]:
    """Every file under `root`, by relative path, ready for JSON; the files are removed."""
    packed = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        packed[path.relative_to(root).as_posix()] = _pack(path)
        path.unlink()
    return packed


def pack_loop_files(root: Path, loop_ids: typing.Collection[str]) -> dict[str, dict[str, str]]:
    """The files under `root` of these loops (audio, waveform, a mix's stems), as `pack_files`
    packs them; the files stay (the caller removes them once they are sent)."""
    suffixes = AUDIO_SUFFIXES | {WAVEFORM_SUFFIX, STEMS_SUFFIX}
    return {
        name: _pack(path) for path in sorted(p for p in root.rglob("*") if p.is_file())
        if any(is_loop_file(name := path.relative_to(root).as_posix(), loop_id, suffixes) for loop_id in loop_ids)
    }


def _pack(path: Path) -> dict[str, str]:
    import soundfile as sf

    if path.suffix.lower() == ".wav" and (subtype := sf.info(str(path)).subtype) in LOSSLESS_WAV:
        samples, rate = sf.read(str(path), dtype="int32")  # integers: the round trip is bit-exact
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format="FLAC", subtype=subtype)
        return {"as": "flac", "wav_subtype": subtype, "data": base64.b64encode(buffer.getvalue()).decode()}
    return {"as": "raw", "data": base64.b64encode(path.read_bytes()).decode()}


INPUTS_DIR = "inputs"
INPUT_ROLES = ("source", "parent", "layer<N>")
"""What a job starts from: its upload (`source_audio`), its parent loop's audio, a mix's layers (`layer1`...).
A remake has inputs of its own, named after what it makes again: `parent.source`, `layer2.parent`, ..."""


def input_files(data_dir: Path, items: typing.Sequence[WorkItem]) -> dict[str, dict[str, dict[str, str]]]:
    """The audio the items start from, as data by job id and role: uploads, parent loops and mix layers.

    A worker on another machine has neither, and a worker must never open a path a job names:
    `with_local_inputs` writes these copies under its scratch directory and points the items at them.
    """
    return {item.job_id: packed for item in items if (packed := {
        role: {**_pack(path), "suffix": path.suffix.lower()} for role, path in _inputs_of(data_dir, item)
    })}


def _inputs_of(data_dir: Path, item: WorkItem, role: str = "") -> typing.Iterator[tuple[str, Path]]:
    if item.source_audio is not None and (source := _audio(data_dir, item.source_audio)) is not None:
        yield f"{role}source", source
    made_from = [("parent", item.parent.audio_path, item.parent.remake)] if item.parent is not None else []
    made_from += [(f"layer{number}", layer.audio_path, layer.remake) for number, layer in enumerate(item.mix or (), start=1)]
    for name, audio_path, remake in made_from:
        if audio_path is not None and (kept := _audio(data_dir, audio_path)) is not None:
            yield f"{role}{name}", kept
        if remake is not None:
            yield from _inputs_of(data_dir, remake, f"{role}{name}.")


def _audio(data_dir: Path, name: str) -> Path | None:
    """An audio file the bot keeps: a parent loop (relative to the data directory) or an upload (absolute)."""
    path = data_dir / name
    return path if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file() else None


def with_local_inputs(
    items: tuple[WorkItem, ...], root: Path, inputs: dict[str, dict[str, dict[str, str]]]
) -> tuple[WorkItem, ...]:
    """The items with every file they name replaced by the copy sent in `inputs`, written under `root`.

    Copies are named by job id and role, never by a path from the item; a file that was not sent
    is one that is not there (a missing upload, a parent loop to make again).
    """
    local = []
    for item in items:
        sent = inputs.get(item.job_id)
        local.append(_localized(item, root, sent if isinstance(sent, dict) else {}, checked_id(item.job_id)))
    return tuple(local)


def _localized(item: WorkItem, root: Path, sent: dict[str, dict[str, str]], job_id: str, role: str = "") -> WorkItem:
    def copy(name: str) -> str | None:
        entry = sent.get(role + name)
        if not isinstance(entry, dict) or entry.get("suffix") not in AUDIO_SUFFIXES:
            return None
        relative = f"{INPUTS_DIR}/{job_id}.{role}{name}{entry['suffix']}"
        _unpack(root / relative, entry)
        return relative

    def remade(remake: WorkItem | None, name: str) -> WorkItem | None:
        return remake and _localized(remake, root, sent, job_id, f"{role}{name}.")

    source = None if item.source_audio is None else str(root / (copy("source") or f"{INPUTS_DIR}/missing"))
    parent = None if item.parent is None else ParentLoop(audio_path=copy("parent"), remake=remade(item.parent.remake, "parent"))
    mix = None if item.mix is None else tuple(
        dataclasses.replace(layer, audio_path=copy(f"layer{number}"), remake=remade(layer.remake, f"layer{number}"))
        for number, layer in enumerate(item.mix, start=1)
    )
    return dataclasses.replace(item, source_audio=source, parent=parent, mix=mix)


def unpack_files(root: Path, packed: dict[str, dict[str, str]]) -> None:
    """Write `pack_files`' output under `root`; each file appears whole (written aside, then renamed).

    Only loop audio, waveforms and a mix's stems, strictly under `root` (`check_result` has checked
    the names); `RogueResult` for a file that is not that, or whose data cannot be decoded.
    """
    for relative, entry in packed.items():
        try:
            _unpack(inside(root, relative, AUDIO_SUFFIXES | {WAVEFORM_SUFFIX, STEMS_SUFFIX}), entry)
        except (ValueError, RuntimeError, KeyError) as error:  # UnsafeFile, bad base64, not FLAC (soundfile's errors)
            raise RogueResult(f"file {relative!r}: {error}") from None


def _unpack(path: Path, entry: dict[str, str]) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    data = base64.b64decode(entry["data"])
    partial = path.with_name(f".{path.name}.partial")
    if entry["as"] == "flac":
        samples, rate = sf.read(io.BytesIO(data), dtype="int32")
        sf.write(str(partial), samples, rate, format="WAV", subtype=entry["wav_subtype"])
    else:
        partial.write_bytes(data)
    os.replace(partial, path)


# --- results from Redis -----------------------------------------------------------------------


class RogueResult(ValueError):
    """A batch's result that no `loopjam worker` would send: refused whole."""


@dataclasses.dataclass(frozen=True)
class BatchResult:
    worker: str
    seconds: float
    events: tuple[BackendEvent, ...]
    files: dict[str, dict[str, str]]
    joined: tuple[str, ...] = ()
    """The jobs sent to join the batch that the worker took (and ran) with it."""


def check_result(result: Any, items: typing.Sequence[WorkItem], joining: typing.Sequence[WorkItem] = ()) -> BatchResult:
    """The result of the batch of `items`, joined by jobs of `joining`, every field checked;
    `RogueResult` says what is wrong.

    The jobs it says it took are jobs of `joining`. Events are about the batch's own jobs and loops
    (those it took included) only, name each loop's file by its loop id (`files.loop_file`), with an
    audio suffix; the files sent are those loops' audio and waveforms, and a mix's stems.
    """
    if not isinstance(result, dict):
        raise RogueResult(f"not a result: {type(result).__name__}")
    worker, seconds, events, files = (result.get(key) for key in ("worker", "seconds", "events", "files"))
    joined = result.get("joined", [])
    _expect(isinstance(worker, str) and isinstance(seconds, (int, float)) and isinstance(events, list)
            and isinstance(files, dict) and isinstance(joined, list), "malformed result")
    sent = {item.job_id: item for item in joining}
    taken = typing.cast(list[Any], joined)
    _expect(all(isinstance(job_id, str) and job_id in sent for job_id in taken) and len(set(taken)) == len(taken),
            "a joining job that was not sent to the batch")
    items = [*items, *(sent[job_id] for job_id in taken)]
    jobs = {item.job_id: item for item in items}
    loop_ids = {loop_id for item in items for loop_id in item.loop_ids}
    mix_ids = {item.job_id for item in items if item.mix is not None}
    decoded = tuple(_checked_event(event, jobs) for event in typing.cast(list[Any], events))
    reported = [event.job_id for event in decoded if isinstance(event, (WorkDone, WorkFailed))]
    _expect(len(reported) == len(set(reported)), "a job reported twice")
    for name, entry in typing.cast(dict[Any, Any], files).items():
        _expect(any(is_loop_file(name, loop_id, AUDIO_SUFFIXES | {WAVEFORM_SUFFIX}) for loop_id in loop_ids)
                or any(is_loop_file(name, mix_id, {STEMS_SUFFIX}) for mix_id in mix_ids),
                f"a file that is no loop of the batch: {str(name)[:200]!r}")
        _expect(isinstance(entry, dict) and entry.get("as") in ("flac", "raw") and isinstance(entry.get("data"), str)
                and (entry["as"] == "raw" or entry.get("wav_subtype") in LOSSLESS_WAV), f"malformed file {name!r}")
    return BatchResult(typing.cast(str, worker), float(typing.cast(float, seconds)), decoded,
                       typing.cast(dict[str, dict[str, str]], files), tuple(taken))


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise RogueResult(problem)


def _checked_event(data: Any, jobs: dict[str, WorkItem]) -> BackendEvent:
    _expect(isinstance(data, dict) and data.get("type") in RESULT_EVENTS and isinstance(data.get("data"), dict),
            "malformed event")
    try:
        event = decode_event(data)
    except Exception as error:  # missing or extra fields, wrong shapes
        raise RogueResult(f"malformed {data['type']}: {error}") from None
    if isinstance(event, ModelUnavailable):
        _expect(all(isinstance(text, str) for text in (event.worker, event.model, event.reason)), "malformed ModelUnavailable")
        return event
    assert isinstance(event, (WorkDone, WorkFailed))  # RESULT_EVENTS
    _expect(isinstance(event.job_id, str) and event.job_id in jobs, f"a job not in the batch: {str(event.job_id)[:80]!r}")
    item = jobs[event.job_id]
    if isinstance(event, WorkFailed):
        _expect(_is_reason(event.reason), "malformed WorkFailed")
        return event
    _expect(bool(event.loops) and all(isinstance(failure, WorkFailed) and failure.job_id in item.loop_ids
                                      and _is_reason(failure.reason) for failure in event.failures),
            f"malformed WorkDone for {event.job_id}")
    for loop in event.loops:
        _expect(isinstance(loop.loop_id, str) and loop.loop_id in item.loop_ids,
                f"a loop not of job {event.job_id}: {str(loop.loop_id)[:80]!r}")
        _expect(is_loop_file(loop.audio_path, loop.loop_id, AUDIO_SUFFIXES),
                f"loop {loop.loop_id}'s audio is not its loop file: {str(loop.audio_path)[:200]!r}")
        _expect(isinstance(loop.seed, int) and _is_report(loop.report), f"malformed loop {loop.loop_id}")
    return event


def _is_reason(reason: object) -> bool:
    return isinstance(reason, str) and 0 < len(reason) <= MAX_REASON


def _is_report(report: object) -> bool:
    """A loop report of JSON scalars, the fields the history stores (`rows.report_fields`) of its types."""
    if not isinstance(report, dict) or not all(isinstance(value, (str, int, float, type(None))) for value in report.values()):
        return False
    stored = typing.get_type_hints(LoopReportFields)
    return all(
        value is None or isinstance(value, str if str in typing.get_args(stored[field]) else (int, float))
        for field in stored if (value := report.get("reason" if field == "verdict_reason" else field)) is not None
    )
