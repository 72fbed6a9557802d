"""The OpenAPI document made exact for the served bundle and settings.

FastAPI's schema is built from the pydantic models before any bundle is loaded, so it cannot say that ``z``
has ``z_dim`` values, which expression names exist, or which texture sizes the settings allow; clients (and
schema fuzzers) would send schema-valid bodies that the service must refuse. :func:`refine` writes those
bundle- and settings-dependent constraints into the document once the bundle is loaded, so that every
schema-valid request is accepted and every 422 answers a request the schema itself rules out.
"""

from __future__ import annotations

import copy
from typing import Any

from facecore.bundle import Bundle
from service import pipeline
from service.settings import Settings

MIN_MESH_RESOLUTION = 32
#: a z whose every value lies within ± this has no direction: the mapping network normalises z, and the
#: exported graph turns a zero (or float32-underflowing) z into NaN
MIN_Z_MAGNITUDE = 1e-15
_KIND = "(" + "|".join(pipeline.OUTPUT_KINDS) + ")"
#: the /reconstruct ``outputs`` form field: comma-separated output kinds (spaces around names allowed)
OUTPUTS_PATTERN = rf"^\s*{_KIND}\s*(,\s*{_KIND}\s*)*$"


def _non_null(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an ``anyOf: [X, null]`` property (or the property itself)."""
    for option in prop.get("anyOf", []):
        if option.get("type") != "null":
            return option
    return prop


def refine(schema: dict[str, Any], bundle: Bundle, settings: Settings) -> dict[str, Any]:
    """Write the bundle's code sizes, expression names and the settings' limits into ``schema`` (in place)."""
    codes = bundle.manifest.codes
    model = bundle.face_model
    comps = schema["components"]["schemas"]
    body = comps["GenerateBody"]
    props = body["properties"]
    for name, width in (("z", codes.z_dim), ("w", codes.w_dim)):
        _non_null(props[name]).update(minItems=width, maxItems=width)
    _non_null(props["z"])["contains"] = {
        "anyOf": [{"exclusiveMinimum": MIN_Z_MAGNITUDE}, {"exclusiveMaximum": -MIN_Z_MAGNITUDE}]
    }
    _non_null(props["identity"]).update(minItems=1, maxItems=model.n_shape)
    props["expression"].update(propertyNames={"enum": list(model.expr_names)}, maxProperties=model.n_expr)
    for target in (props, comps["Body_reconstruct_reconstruct_post"]["properties"]):
        target["texture_size"].update(minimum=settings.min_texture_size, maximum=settings.max_texture_size)
        target["mesh_resolution"].update(minimum=MIN_MESH_RESOLUTION, maximum=settings.max_mesh_resolution)
    props["outputs"].update(minItems=1)
    # one latent at most: of seed, z and w, any two are null or absent. Written as complete alternatives (not
    # with `not`, nor branches that name only the two nulls): fuzzers generate from one branch at a time
    null = {"type": "null"}
    body["anyOf"] = [
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {**copy.deepcopy(props), a: null, b: null},
        }
        for a, b in (("z", "w"), ("seed", "w"), ("seed", "z"))
    ]
    form = comps["Body_reconstruct_reconstruct_post"]["properties"]
    form["outputs"]["pattern"] = OUTPUTS_PATTERN
    form["image"].update(format="binary")
    if "ws" not in bundle.manifest.graphs.get("encoder", _NoGraph()).outputs:
        form["albedo"]["enum"] = ["photo"]
    return schema


class _NoGraph:
    outputs: tuple[str, ...] = ()
