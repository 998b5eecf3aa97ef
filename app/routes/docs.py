"""The OpenAPI schema and its two viewers, behind the API key unless DOCS_PUBLIC is set.

FastAPI's own `/openapi.json`, `/docs` and `/redoc` are turned off in `app.main` (they take no
dependencies); these answer the same paths.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from app.auth import DocsAccess

router = APIRouter(dependencies=[DocsAccess], include_in_schema=False)

OPENAPI_PATH = "/openapi.json"


@router.get(OPENAPI_PATH)
def openapi(request: Request) -> dict[str, Any]:
    schema: dict[str, Any] = request.app.openapi()
    return schema


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{request.app.title} - Swagger UI")


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=OPENAPI_PATH, title=f"{request.app.title} - ReDoc")
