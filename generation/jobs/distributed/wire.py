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

from ..backend import BackendEvent, ModelUnavailable, WorkDone, WorkFailed, WorkItem

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

T = TypeVar("T")


def cancel_key(queue_name: str, job_id: str) -> str:
    """Set by the bot when a job is cancelled; read by the worker running it."""
    return f"loopjam:{queue_name}:cancel:{job_id}"


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


def decode_items(data: list[dict[str, Any]]) -> tuple[WorkItem, ...]:
    return tuple(from_json(WorkItem, item) for item in data)


def encode_event(event: BackendEvent) -> dict[str, Any]:
    return {"type": type(event).__name__, "data": to_json(event)}


def decode_event(data: dict[str, Any]) -> BackendEvent:
    return from_json(RESULT_EVENTS[data["type"]], data["data"])


# --- files ------------------------------------------------------------------------------------


def pack_files(root: Path) -> dict[str, dict[str, str]]:
    """Every file under `root`, by relative path, ready for JSON; the files are removed."""
    packed = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        packed[path.relative_to(root).as_posix()] = _pack(path)
        path.unlink()
    return packed


def _pack(path: Path) -> dict[str, str]:
    import soundfile as sf

    if path.suffix.lower() == ".wav" and (subtype := sf.info(str(path)).subtype) in LOSSLESS_WAV:
        samples, rate = sf.read(str(path), dtype="int32")  # integers: the round trip is bit-exact
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format="FLAC", subtype=subtype)
        return {"as": "flac", "wav_subtype": subtype, "data": base64.b64encode(buffer.getvalue()).decode()}
    return {"as": "raw", "data": base64.b64encode(path.read_bytes()).decode()}


def input_files(data_dir: Path, items: typing.Sequence[WorkItem]) -> dict[str, dict[str, str]]:
    """The files the items start from, packed under their worker-side paths: parent loops and uploads.

    A worker on another machine has neither; `with_local_inputs` points the items at the copies.
    """
    packed = {}
    for item in items:
        if item.parent is not None and item.parent.audio_path and (data_dir / item.parent.audio_path).is_file():
            packed[item.parent.audio_path] = _pack(data_dir / item.parent.audio_path)
        if item.source_audio is not None and Path(item.source_audio).is_file():
            packed[_upload_path(item)] = _pack(Path(item.source_audio))
    return packed


def with_local_inputs(items: tuple[WorkItem, ...], root: Path) -> tuple[WorkItem, ...]:
    """The items reading their uploads from the copies `input_files` sent (parent loops keep their paths)."""
    return tuple(
        dataclasses.replace(item, source_audio=str(root / _upload_path(item)))
        if item.source_audio is not None and (root / _upload_path(item)).is_file() else item
        for item in items
    )


def _upload_path(item: WorkItem) -> str:
    return f"inputs/{item.job_id}{Path(typing.cast(str, item.source_audio)).suffix.lower()}"


def unpack_files(root: Path, packed: dict[str, dict[str, str]]) -> None:
    """Write `pack_files`' output under `root`; each file appears whole (written aside, then renamed)."""
    import soundfile as sf

    root = root.resolve()
    for relative, entry in packed.items():
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"a worker sent a file outside the data directory: {relative!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = base64.b64decode(entry["data"])
        partial = path.with_name(f".{path.name}.partial")
        if entry["as"] == "flac":
            samples, rate = sf.read(io.BytesIO(data), dtype="int32")
            sf.write(str(partial), samples, rate, format="WAV", subtype=entry["wav_subtype"])
        else:
            partial.write_bytes(data)
        os.replace(partial, path)
