"""FastAPI dependencies: the app's bundle, engine and settings live on ``app.state`` (set by the lifespan).

They are ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, two thread round trips per
request on the event loop for an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.engine.runtime import Runtime
from service.settings import Settings


async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        raise HTTPException(503, detail="the model bundle is still loading", headers={"Retry-After": "2"})
    return runtime


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
