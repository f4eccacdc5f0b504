"""LoopJam settings: defaults, then `config.toml`, then `LOOPJAM_*` environment variables.

Nested settings use a double underscore in the environment: `LOOPJAM_QUEUE__BATCH_SIZE=4`.
The Discord token is also read from the plain `DISCORD_TOKEN` variable. It is a `SecretStr`, so
neither `repr`, logging nor a validation error ever shows it.

This module must stay importable by the bot, so it imports neither torch nor discord.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "LOOPJAM_CONFIG"
DEFAULT_CONFIG_FILE = Path("config.toml")

# What a request may ask for, wherever it comes from (`loopjam`, `/loop`, `/loopify`, the buttons).
BPM_MIN, BPM_MAX = 40.0, 240.0
ALLOWED_BARS = (1, 2, 4, 8)
MAX_BARS = max(ALLOWED_BARS)
"""The longest loop; a server may lower it (`/settings max-bars`)."""
ALLOWED_BEATS_PER_BAR = (2, 3, 4, 6, 7)
PROMPT_MAX_CHARS = 500
MAX_SOURCE_SECONDS = 600.0
"""The longest audio file a loop is cut from (`loopjam loopify`, `/loopify`)."""
# What a source file's header may declare: checked before a sample is decoded, since a tiny FLAC
# can declare a huge rate or length and the loop engine's memory grows with both.
MAX_SOURCE_SAMPLE_RATE = 192_000
MAX_SOURCE_CHANNELS = 8
MAX_SOURCE_SAMPLES = int(MAX_SOURCE_SECONDS * 96_000 * 2)
"""Frames x channels: as many samples as 10 minutes of 96 kHz stereo."""
ANALYSIS_MAX_SAMPLE_RATE = 48_000
"""Sources above it are resampled to it (and more than 2 channels folded to stereo) while decoded."""


class Section(BaseModel):
    """A `[section]` of the file; a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DiscordSettings(Section):
    token: SecretStr | None = Field(default=None, description="Bot token; prefer the DISCORD_TOKEN variable.")
    api_base_url: str = "https://discord.com/api/v10"
    gateway_url: str | None = None
    sync_guild: int | None = None
    redelivery_interval_s: float = Field(default=30.0, gt=0, le=3600)


Decoder = Literal["fast", "audiocraft"]
"""How MusicGen's tokens are decoded: LoopJam's static-cache loop (`generation.fast_decode`) or audiocraft's own."""


class ModelSettings(Section):
    name: str = "facebook/musicgen-small"
    allowed: list[str] = Field(default_factory=lambda: ["facebook/musicgen-small"])
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    decoder: Decoder = "fast"
    warmup: bool = True


class GenerationSettings(Section):
    temperature: float = Field(default=1.0, gt=0.0, le=2.0)
    top_k: int = Field(default=250, ge=0, le=2048)
    top_p: float = Field(default=0.0, ge=0.0, le=1.0)
    cfg_coef: float = Field(default=3.0, ge=0.0, le=10.0)
    extra_seconds: float = Field(default=4.0, ge=0.0, le=20.0)
    candidates: int = Field(default=2, ge=1, le=8)
    retry_budget: int = Field(default=2, ge=0, le=8)


class LoopSettings(Section):
    max_stretch: float = Field(default=0.12, gt=0.0, le=0.5)
    crossfade_ms: float = Field(default=40.0, ge=5.0, le=200.0)
    target_lufs: float = Field(default=-14.0, ge=-40.0, le=-5.0)
    true_peak_dbtp: float = Field(default=-1.0, ge=-12.0, le=0.0)
    processes: int | None = Field(
        default=None, ge=1, le=64, description="Processes that cut a batch's candidates; None: one per core, up to 8"
    )


class QueueSettings(Section):
    mode: Literal["embedded", "redis"] = "embedded"
    redis_url: str = "redis://127.0.0.1:6379/0"
    rate_limit_jobs: int = Field(default=5, ge=1)
    rate_limit_window_s: float = Field(default=600.0, gt=0)
    max_queued_per_user: int = Field(default=2, ge=1)
    max_queue: int = Field(default=50, ge=1)
    batch_size: int | None = Field(default=None, ge=1, le=64, description="None: 8 on GPU, 2 on CPU")
    batch_wait_ms: int = Field(default=300, ge=0, le=5000)
    job_timeout_s: float = Field(default=600.0, gt=0)


class StorageSettings(Section):
    data_dir: Path = Path("data")
    database_url: SecretStr | None = Field(default=None, description="None: SQLite in data_dir")
    retention_days: float = Field(default=7.0, gt=0)


class JamSettings(Section):
    idle_hours: float = Field(default=24.0, gt=0, description="A jam nobody adds to, removes from or mixes ends after this long")


class MetricsSettings(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=1, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LOOPJAM_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_TOKEN", "LOOPJAM_DISCORD_TOKEN")
    )
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    loop: LoopSettings = Field(default_factory=LoopSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    jam: JamSettings = Field(default_factory=JamSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def token(self) -> SecretStr | None:
        """The bot token from `DISCORD_TOKEN` or, failing that, `[discord] token` in the file."""
        return self.discord_token or self.discord.token


class SettingsError(ValueError):
    """A setting is invalid; the message is one line naming it and what is allowed."""


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    name = ".".join(str(part) for part in first["loc"]) or "config"
    # Never echo the rejected value: it may be a token or a URL with a password in it.
    return f"Invalid setting {name}: {first['msg']}"


def load_settings(config_file: Path | None = None) -> Settings:
    """Read the settings, raising `SettingsError` with one clear line when one is invalid.

    The file is `config_file`, else `$LOOPJAM_CONFIG`, else `./config.toml` when it exists.
    """
    if config_file is None:
        config_file = Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
        if not config_file.is_file() and CONFIG_ENV not in os.environ:
            config_file = None
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"Config file not found: {config_file}")

    class SettingsFromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        return SettingsFromFile()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
    except (OSError, ValueError) as error:  # a malformed TOML file
        raise SettingsError(f"Cannot read the config file: {error}") from None


def model_label(name: str) -> str:
    """How users see a configured model: a Hugging Face id (`facebook/musicgen-small`) as it is, a
    local checkpoint by its directory's name: the operator's paths are nobody else's business."""
    path = PurePath(name)
    local = path.is_absolute() or name.startswith((".", "~")) or len(path.parts) > 2 or Path(name).is_dir()
    return path.name if local and path.name else name
