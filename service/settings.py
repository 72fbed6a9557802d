"""Service settings from the environment (prefix ``FACE_``), read once through :func:`get_settings`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    max_mesh_resolution: int = Field(512, le=1024, description="UV grid of the detailed mesh")
    request_timeout_s: float = Field(30.0, gt=0)
    # dynamic batching
    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(64, ge=1)
    # results
    results_dir: Path = Path("/tmp/albedogan-results")
    results_max_bytes: int = Field(2 * 1024**3, ge=1024 * 1024)
    results_ttl_s: float = Field(24 * 3600, gt=0)
    # execution
    providers: tuple[str, ...] = Field(
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
        description="onnxruntime providers in order of preference; unavailable ones are skipped",
    )
    intra_op_threads: int = Field(0, ge=0, description="0 = onnxruntime's default")
    warmup: bool = True
    cors_origins: tuple[str, ...] = ()


@lru_cache
def get_settings() -> Settings:
    return Settings()
