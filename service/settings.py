"""Service settings from the environment (prefix ``FACE_``), read once through :func:`get_settings`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EMBEDDED_BUNDLE = Path(__file__).parent / "bundled" / "default"


class Settings(BaseSettings):
    """Every limit the service enforces; override with environment variables, e.g. ``FACE_MAX_BATCH=16``."""

    model_config = SettingsConfigDict(env_prefix="FACE_", extra="ignore")

    bundle: Path = Field(EMBEDDED_BUNDLE, description="model bundle folder or .zip (default: the embedded one)")
    # requests
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(25_000_000, ge=10_000, description="decompression-bomb guard")
    min_texture_size: int = 256
    max_texture_size: int = Field(2048, le=4096)
    max_mesh_resolution: int = Field(512, le=1024, description="largest mesh_resolution a request may ask for")
    request_timeout_s: float = Field(30.0, gt=0)
    # dynamic batching
    max_batch: int | None = Field(
        None,
        ge=1,
        le=256,
        description="rows per graph call; default: 1 when every graph runs on the CPU, 8 with a GPU provider "
        "(service.engine.runtime.batching); a batch never has more rows than max_inflight requests give it",
    )
    max_wait_ms: float | None = Field(
        None,
        ge=0,
        description="how long a batch waits for requests in flight to join it; default: 0 on the CPU, 5 ms with a "
        "GPU provider (service.engine.runtime.batching)",
    )
    max_queue: int = Field(64, ge=1)
    # admission control of the CPU stages (threads each; a request waits for at most max_stage_queue others)
    detect_concurrency: int = Field(1, ge=1, le=64, description="face detections at once")
    texture_concurrency: int = Field(1, ge=1, le=64, description="photo texture unwraps at once")
    geometry_concurrency: int = Field(2, ge=1, le=64, description="mesh decodes at once")
    encode_concurrency: int = Field(2, ge=1, le=64, description="file encodings (PNG/OBJ/GLB) at once; bounds memory")
    max_stage_queue: int = Field(32, ge=0, description="requests waiting per stage beyond those running")
    max_inflight: int = Field(
        4,
        ge=1,
        le=256,
        description="requests computing at once (the rest wait, or are refused when they could not finish)",
    )
    # results
    results_dir: Path = Path("/tmp/albedogan-results")
    results_max_bytes: int = Field(2 * 1024**3, ge=1024 * 1024)
    results_ttl_s: float = Field(24 * 3600, gt=0, description="results are deleted this long after last use")
    result_secret: SecretStr | None = Field(
        None,
        description="key of the result ids (HMAC); default: generated once into results_dir/.secret, so restarts "
        "and replicas sharing the folder agree",
    )
    # execution
    providers: tuple[str, ...] = Field(
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
        description="onnxruntime providers in order of preference; unavailable ones are skipped",
    )
    intra_op_threads: int = Field(0, ge=0, description="0 = onnxruntime's default")
    warmup: bool = True
    # access
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="origins allowed by CORS, comma-separated (e.g. https://a.example,https://b.example); '*' all"
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="comma-separated; when set, every route but /, /static, /docs, /health and /metrics needs "
        "'Authorization: Bearer KEY' or 'X-API-Key: KEY', and each key sees only its own results",
    )

    @field_validator("cors_origins", "api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):  # JSON list, as before
                import json

                return tuple(json.loads(value))
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
