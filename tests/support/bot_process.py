"""The real `loopjam run` process against the Discord API double, for the end-to-end tests.

Import from test modules with `from bot_process import ...`; the `double` fixture is in tests/e2e/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
from pathlib import Path

import soundfile as sf
from discord_double import DiscordDouble, RecordedRequest

CALLBACK = "POST /interactions/{interaction_id}/{token}/callback"
FOLLOW_UP = "POST /webhooks/{application_id}/{token}"
EDIT_ORIGINAL = "PATCH /webhooks/{application_id}/{token}/messages/@original"
CHANNEL_MESSAGE = "POST /channels/{channel_id}/messages"
RESULT_TIMEOUT_S = 90.0


def exact_samples(bpm: float, bars: int, beats: int = 4, rate: int = 32000) -> int:
    return round(bars * beats * 60 / bpm * rate)


class BotProcess:
    """`python -m generation run` with its settings in the environment."""

    def __init__(self, double: DiscordDouble, model_dir: Path, data_dir: Path, log: Path | None = None) -> None:
        self.log = log
        """Where its stderr goes (appended), when a test reads it."""
        self.env = {
            **os.environ,
            **double.bot_environment(),
            "LOOPJAM_MODEL__NAME": str(model_dir),
            "LOOPJAM_MODEL__ALLOWED": f'["{model_dir}"]',
            "LOOPJAM_MODEL__WARMUP": "false",
            "LOOPJAM_STORAGE__DATA_DIR": str(data_dir),
            "LOOPJAM_GENERATION__CANDIDATES": "1",
            "LOOPJAM_GENERATION__RETRY_BUDGET": "0",
            "LOOPJAM_GENERATION__EXTRA_SECONDS": "1.0",
            "LOOPJAM_QUEUE__RATE_LIMIT_JOBS": "50",
            "LOOPJAM_QUEUE__MAX_QUEUED_PER_USER": "2",
            "LOOPJAM_DISCORD__REDELIVERY_INTERVAL_S": "2",
            "HF_HUB_OFFLINE": "1",
        }
        self.process: asyncio.subprocess.Process | None = None
        self.double = double

    async def start(self) -> None:
        identified = self.double.gateway.identify_count
        with self.log.open("ab") if self.log is not None else contextlib.nullcontext() as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "generation", "run", env=self.env, cwd=self.env["LOOPJAM_STORAGE__DATA_DIR"],
                stderr=stderr,
            )
        await self.double.gateway.wait_connected(timeout=60, min_identifies=identified + 1)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                await self.kill()


def wav_samples(request: RecordedRequest) -> int:
    (audio,) = [f for f in request.files if f.filename.endswith((".wav", ".flac", ".ogg"))]
    return sf.info(io.BytesIO(audio.data)).frames


def job_id_of(result: RecordedRequest) -> str:
    return result.json["embeds"][0]["footer"]["text"].split()[1]
