"""A real-music corpus for the loop engine: 15 s excerpts of recordings that Debian packages ship.

The annotations (tempo, beats per bar, downbeat times, how each was checked) are kept in
real_corpus.toml beside this file. The audio is fetched at test time with `apt-get download`,
unpacked with `dpkg-deb -x` into a cache directory reused across runs, and never committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

if tp.TYPE_CHECKING:
    from corpus import LoopSource

    from generation.loop import LoopResult

ANNOTATIONS = Path(__file__).with_name("real_corpus.toml")
CACHE_ENV = "LOOPJAM_REAL_CORPUS"  # where the packages and excerpts are cached (default below)
LAG_HOP = 64  # onset frames about 1.5 ms apart at 44.1 kHz
LAG_REACH_S = 0.06  # each beat's envelope compared over this much on either side of it
LAG_SEARCH_S = 0.03  # ... at lags up to this
# Excerpts also looped at a request 4-5 % off their tempo (issue #13's table): request / source tempo.
OFF_TEMPO = {
    "escape": 1.045, "menu": 0.96, "fb-intro": 1.05, "batcave": 0.955, "fp-swing": 1.045, "waltz": 0.955,
    "calm": 1.04, "halftime": 0.96, "slow85": 0.955,
}


class CorpusUnavailable(RuntimeError):
    """The packages could not be fetched (no apt-get or dpkg-deb, or the mirror is unreachable)."""


@dataclass(frozen=True)
class Excerpt:
    """One annotated excerpt: `seconds` of the package's file `path` from `start`."""

    name: str
    package: str
    path: str
    start: float
    seconds: float
    bpm: float
    beats_per_bar: int
    downbeats: tuple[float, ...]  # seconds from the excerpt's start
    description: str
    checked: str  # how the annotation was verified


def _load() -> tuple[dict[str, str], list[Excerpt]]:
    data = tomllib.loads(ANNOTATIONS.read_text())
    licences = {name: entry["licence"] for name, entry in data["packages"].items()}
    excerpts = [Excerpt(**{**row, "downbeats": tuple(row["downbeats"])}) for row in data["excerpt"]]
    return licences, excerpts


LICENCES, EXCERPTS = _load()


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loopjam" / "real-corpus"
    return Path(os.environ.get(CACHE_ENV, default))


def _unpacked(package: str, cache: Path) -> Path:
    """The package's files under `cache` (downloaded and unpacked once)."""
    root = cache / "unpacked" / package
    if (root / ".done").exists():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CorpusUnavailable("apt-get and dpkg-deb are needed to fetch the real-music corpus")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        done = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise CorpusUnavailable(f"apt-get download {package} failed: {done.stderr.strip()[-300:]}")
    (deb,) = debs.glob(f"{package}_*.deb")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=300)
    (root / ".done").touch()
    return root


def excerpt_file(excerpt: Excerpt, cache: Path | None = None) -> Path:
    """The excerpt as a WAV at the source's rate and channels (cut once, then reused)."""
    cache = cache or cache_dir()
    wav = cache / "excerpts" / f"{excerpt.name}.wav"
    if not wav.exists():
        source = _unpacked(excerpt.package, cache) / excerpt.path
        rate = sf.info(str(source)).samplerate
        audio, _ = sf.read(
            str(source), start=round(excerpt.start * rate), frames=round(excerpt.seconds * rate),
            dtype="float32", always_2d=True,
        )
        wav.parent.mkdir(parents=True, exist_ok=True)
        partial = wav.with_suffix(".part.wav")
        sf.write(str(partial), audio, rate)
        partial.replace(wav)
    return wav


def fetch_all(cache: Path | None = None) -> dict[str, Path]:
    """Every excerpt's WAV by name; raises `CorpusUnavailable` when the packages cannot be fetched."""
    return {excerpt.name: excerpt_file(excerpt, cache) for excerpt in EXCERPTS}


def read_excerpt(path: Path) -> tuple[np.ndarray, int]:
    """A cached excerpt as ([C, T] float32, sample rate)."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.T.copy(), int(rate)


def _source_beats(excerpt: Excerpt, loop: LoopResult) -> np.ndarray:
    """[B + 1] source seconds of the loop's B beats and of its end, at the annotated tempo from where it starts."""
    return loop.report.source_start_seconds + 60.0 / excerpt.bpm * np.arange(loop.grid.shape.beats + 1)


def loop_smear(excerpt: Excerpt, path: Path, loop: LoopResult) -> float:
    """`corpus.attack_smear` of a loop cut from the excerpt at `path`: each of its beats against the
    source beat it came from."""
    from corpus import attack_smear

    source, rate = read_excerpt(path)
    return attack_smear(loop.audio, loop.sample_rate, source, rate, _source_beats(excerpt, loop)[:-1])


def loop_source(excerpt: Excerpt, path: Path, loop: LoopResult) -> LoopSource:
    """What a loop was cut from the excerpt at `path`, for `corpus.measure_loop`'s seam."""
    from corpus import LoopSource

    source, rate = read_excerpt(path)
    return LoopSource(source, rate, float(_source_beats(excerpt, loop)[-1]))


def lags_behind_the_source(path: Path, loop: LoopResult) -> np.ndarray:
    """[B] ms each beat of `loop` (asked at the excerpt's own tempo) plays later than the same beat of
    its source, unstretched, from where the loop starts: the lag that best aligns their onset envelopes
    (librosa's) around the beat. The loop is read as it repeats, so its beat 0 is the one after the wrap;
    the source, as it plays. A loop that leaves the source's timing as it is reads a constant."""
    import librosa
    from corpus import best_lag

    source, rate = read_excerpt(path)
    samples, beats = loop.audio.shape[1], loop.grid.shape.beats
    reach, search = (round(seconds * rate / LAG_HOP) for seconds in (LAG_REACH_S, LAG_SEARCH_S))
    if rate != loop.sample_rate:
        raise ValueError("the loop must keep its source's sample rate")
    start = round(loop.report.source_start_seconds * rate) + samples  # in the source padded as below

    def envelope(audio: np.ndarray) -> np.ndarray:
        return librosa.onset.onset_strength(y=audio.mean(axis=0), sr=rate, hop_length=LAG_HOP)

    played = envelope(np.tile(loop.audio, 3))  # the middle copy, after a wrap
    # The source from a loop's length before the loop's start (silence before the excerpt's start).
    reference = envelope(np.pad(source, ((0, 0), (samples, samples)))[:, start - samples : start + 2 * samples])
    frames = [round((samples + beat * samples / beats) / LAG_HOP) for beat in range(beats)]
    lags = [best_lag(played, frame, reference[frame - reach : frame + reach + 1], search) for frame in frames]
    return np.array(lags) * LAG_HOP / rate * 1000
