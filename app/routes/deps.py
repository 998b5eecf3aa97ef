"""Dependencies the routes share: settings, the Celery app and the Redis client of the running app.

`async def` though they await nothing: FastAPI runs a plain `def` dependency in its thread pool, a hop
there and back per dependency, and under issue 10's load each hop waited a turn of an event loop with
a hundred polls ready (a burst of submissions took 13.6 s). Reading `app.state` blocks nothing."""

from __future__ import annotations

from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Request

from app.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_celery(request: Request) -> Celery:
    celery: Celery = request.app.state.celery
    return celery


async def get_redis_client(request: Request) -> redis.Redis:
    client: redis.Redis = request.app.state.redis
    return client


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
RedisDep = Annotated[redis.Redis, Depends(get_redis_client)]
