"""The loop report and the verdict: good, usable or unusable, with a human reason."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Verdict = Literal["good", "usable", "unusable"]

# Reason codes; the pipeline treats SILENT as an error and retries or ranks the others.
SILENT = "silent"
NO_PULSE = "no_pulse"
TEMPO_OUT_OF_RANGE = "tempo_out_of_range"
TOO_SHORT = "too_short"
WEAK = "weak"

NO_PULSE_STRENGTH = 0.12  # onset autocorrelation below this: noise or a drone, nothing to loop on
GOOD_DOWNBEAT_CONFIDENCE = 0.2
GOOD_SEAM = 0.6
GOOD_STABILITY = 0.6
# The loop's median onset deviation from its grid (grid_error.py) above which it is not good. Every
# loop of the rendered corpus measures <= 4.5 ms and of the real-music corpus <= 6.5 ms; a 3 % tempo
# wave cut at one ratio measures 17-27 ms.
GOOD_GRID_ERROR_MS = 8.0


@dataclass(frozen=True)
class LoopReport:
    source_bpm: float
    """Tempo of the source's pulse (a half-time groove reports its own, e.g. 70 for a 140 request)."""
    metric_relation: float
    """Source pulse / requested beat: 1, 1/2 (half time), 2 (double time), 2/3 or 3/2."""
    stretch_ratio: float
    """Speed factor applied: requested tempo / source tempo in requested beats (>1 is faster)."""
    source_start_seconds: float
    """Where in the input (continuation appended) the loop starts, before stretching."""
    downbeat_confidence: float
    seam_score: float
    tempo_stability: float
    loudness_lufs: float | None
    """Integrated loudness after normalisation; None for silence."""
    verdict: Verdict
    reason: str | None
    """Why the loop is not good, for a human; None when good."""
    reason_code: str | None
    """Machine form of the main reason: silent, no_pulse, tempo_out_of_range, too_short or weak."""
    grid_error_ms: float | None = None
    """Median deviation of the loop's onsets from the requested grid, measured on the loop itself;
    None when it has too few onsets to tell (or was not measured)."""
    source_key: str | None = None
    """The key detected in the loop before any shift ("A minor"); None when not asked for or it has none."""
    key_confidence: float | None = None
    target_key: str | None = None
    """The key asked for (a jam's), when one was."""
    key_shift_semitones: int | None = None
    """How far the loop was moved to `target_key` (-6..+6; 0 when it was in key or has no key)."""

    @property
    def silent(self) -> bool:
        return self.reason_code == SILENT

    @property
    def quality(self) -> float:
        """One number to rank candidates by (higher is better); unusable ones rank last."""
        rank = {"good": 2.0, "usable": 1.0, "unusable": 0.0}[self.verdict]
        return rank + (self.seam_score + self.tempo_stability + self.downbeat_confidence) / 3

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields (floats rounded, non-finite ones as None), `silent` included."""
        fields = {
            key: (round(value, 4) if math.isfinite(value) else None) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }
        return {**fields, "silent": self.silent}


@dataclass(frozen=True)
class Findings:
    """What the engine measured, before judging."""

    silent: bool = False
    pulse_strength: float = 0.0
    within_stretch_limit: bool = True
    stretch_needed: float = 0.0
    complete: bool = True
    downbeat_confidence: float = 0.0
    seam_score: float = 0.0
    tempo_stability: float = 0.0
    grid_error_ms: float | None = None


def judge(findings: Findings, max_stretch: float) -> tuple[Verdict, str | None, str | None]:
    """(verdict, human reason, reason code) for what was measured."""
    if findings.silent:
        return "unusable", "The audio is silent.", SILENT
    if findings.pulse_strength < NO_PULSE_STRENGTH:
        return "unusable", "No steady beat found: the audio sounds like noise or a drone.", NO_PULSE
    if not findings.within_stretch_limit:
        return "unusable", (
            f"The audio's tempo is {findings.stretch_needed:+.0%} off the request, "
            f"more than the {max_stretch:.0%} stretch limit."
        ), TEMPO_OUT_OF_RANGE
    if not findings.complete:
        return "unusable", "The audio is shorter than the loop; it was repeated to fill it.", TOO_SHORT
    weak = [
        text for ok, text in (
            (findings.downbeat_confidence >= GOOD_DOWNBEAT_CONFIDENCE, "the downbeats are unclear"),
            (findings.seam_score >= GOOD_SEAM, "the end does not flow well into the start"),
            (findings.tempo_stability >= GOOD_STABILITY, "the tempo wavers"),
            (_on_grid(findings.grid_error_ms), "the beat wanders off the grid"),
        ) if not ok
    ]
    if weak:
        return "usable", "Usable, but " + ", and ".join(weak) + ".", WEAK
    return "good", None, None


def _on_grid(grid_error_ms: float | None) -> bool:
    """Whether a loop's onsets keep to its grid; True when it has too few to tell (nothing to wander)."""
    return grid_error_ms is None or grid_error_ms <= GOOD_GRID_ERROR_MS
