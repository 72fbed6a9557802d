"""Request and response bodies (pydantic); bundle-dependent checks happen in the routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Finite = Annotated[float, Field(allow_inf_nan=False)]
#: a latent value: finite and small enough that the networks' float32 arithmetic cannot overflow (a standard
#: normal z or a w lies within ±10; ±3e38 used to overflow into a NaN texture and a 500)
Latent = Annotated[float, Field(ge=-1e4, le=1e4, allow_inf_nan=False)]


def _integral(value):
    """JSON Schema counts 46.0 as an integer; so does the service (strict mode alone would refuse it)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: an integer as JSON Schema means it: 7 or 7.0, never "7" or true
Integer = Annotated[int, BeforeValidator(_integral)]
#: the seed range; the bounds sit before the validator so that the schema states them as minimum/maximum
Seed = Annotated[int, Field(ge=0, le=2**32 - 1), BeforeValidator(_integral)]
OutputKind = Literal["albedo", "displacement", "normal", "obj", "glb"]


#: the sizes a request gets unless it asks otherwise (the service warms up at them)
DEFAULT_TEXTURE_SIZE = 512
DEFAULT_MESH_RESOLUTION = 256


class GenerateBody(BaseModel):
    """A random or specified face. Exactly one of ``seed``, ``z`` or ``w`` (default: seed 0)."""

    # strict: `"seed": true` or `"7"` is a 422, not seed 1 or 7 (JSON integers still count as numbers)
    model_config = ConfigDict(extra="forbid", strict=True)

    seed: Seed | None = None
    z: list[Latent] | None = Field(None, max_length=4096, description="latent z (z_dim values)")
    w: list[Latent] | None = Field(None, max_length=4096, description="intermediate latent w (w_dim values)")
    truncation: Finite = Field(0.7, ge=0.0, le=1.5, description="ψ toward the mean w (paper: 0.7)")
    expression: dict[str, Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]] = Field(
        default_factory=dict, max_length=256, description="ARKit blendshape name → weight in [0, 1]"
    )
    identity: list[Annotated[float, Field(ge=-10.0, le=10.0, allow_inf_nan=False)]] | None = Field(
        None,
        max_length=4096,
        description="identity coefficients (leading components; σ units of the wide span); "
        "absent: the head the face implies (the bundle's codes graph) or else one from the face model's prior",
    )
    texture_size: Integer = Field(DEFAULT_TEXTURE_SIZE, description="output texture edge in texels (resampled)")
    mesh_resolution: Integer = Field(
        DEFAULT_MESH_RESOLUTION,
        description="detail of the detailed mesh: about as many skin vertices as an R × R grid over the UV layout",
    )
    outputs: list[OutputKind] = Field(default_factory=lambda: ["albedo", "displacement", "normal", "obj", "glb"])
    blendshapes: bool = Field(False, description="embed the ARKit expressions as GLB morph targets (large)")

    @model_validator(mode="after")
    def _one_latent(self) -> GenerateBody:
        given = [n for n in ("seed", "z", "w") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of seed, z or w (got {', '.join(given)})")
        if not given:
            self.seed = 0
        if not self.outputs:
            raise ValueError("outputs must name at least one output")
        return self


class ErrorBody(BaseModel):
    """Every error: a message, or for 422 on a body field the list of pydantic errors."""

    detail: str | list[dict]


class ResultBody(BaseModel):
    id: str
    links: dict[str, str]
    codes: dict
    bundle: dict
    timings_ms: dict[str, float]
    cached: bool = False
    face: dict | None = Field(
        None,
        description="/reconstruct: detected box, 5 points, the crop's alignment anchors (and what found them), "
        "fitted 68 landmarks; in the uploaded photo's pixels (upright per its EXIF orientation), whose size is "
        "'image_size' (width, height)",
    )
    albedo: str | None = Field(None, description="/reconstruct: where the albedo came from, photo or generated")
    texture: dict | None = Field(
        None,
        description="albedo texture: 'size' (texels a side, as asked) and 'native_resolution' (the size it was made "
        "at: the generator's output, or the photo's unwrap; above it the texture is resampled and adds no detail); "
        "/reconstruct also 'flags': why the photo's albedo (and a latent read off it) may not be the person's colour "
        "('greyscale', 'colour_cast', 'over_exposed' / 'under_exposed': the skin's level was brought within skin's "
        "range by the light, 'no_skin_model'; empty when none) and 'iris': the exported eyes' iris colour ('srgb') and "
        "where it came from ('source': 'photo', measured between the photo's lids; 'albedo', read off the map's eye "
        "texels; 'default'); 'skin_srgb': the photo's de-lit skin colour (null when no skin model was built) and "
        "'skin_tone': where the map's skin colour comes from ('photo'; 'generator': albedo=generated on a photo "
        "whose colour is flagged, or without a photo albedo)",
    )
