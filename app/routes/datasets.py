"""`/datasets`: upload an `.npz`, list and read uploaded and built-in datasets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from starlette.datastructures import UploadFile

from app.auth import REQUIRE_OWNER, UNAUTHORIZED_RESPONSE, CurrentOwner, DatasetAccess, listed_owner
from app.db import SessionDep
from app.routes.deps import SettingsDep
from app.schemas import DatasetPublic, Page
from app.services import datasets as dataset_service
from app.services.errors import PayloadTooLarge, Unprocessable

router = APIRouter(
    prefix="/datasets", tags=["datasets"], dependencies=[REQUIRE_OWNER], responses=UNAUTHORIZED_RESPONSE
)

CHUNK_BYTES = 1024 * 1024

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the .npz file"},
                        "name": {"type": "string", "description": "defaults to the file name"},
                    },
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "the raw .npz, streamed; `?filename=` and `?name=` describe it",
            },
        },
    }
}


async def _file_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic, openapi_extra=_UPLOAD_BODY
)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    owner: CurrentOwner,
    filename: Annotated[str | None, Query(description="file name of a raw (octet-stream) upload")] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Upload an `.npz` with `x` (N x C x H x W or N x H x W x C, uint8 or float) and `y` (N int labels).

    Multipart (field `file`, optional field `name`) or the raw file as `application/octet-stream`, which
    is streamed to the artifact store as it arrives. It belongs to the key's owner. 413 over
    MAX_UPLOAD_BYTES or over the owner's MAX_DATASET_BYTES_PER_OWNER; 422 when darts_core cannot use it.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
        raise PayloadTooLarge(dataset_service.too_large_message(settings))
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Unprocessable("multipart upload needs a file field named 'file'", loc=("body", "file"))
        form_name = form.get("name")
        dataset = await dataset_service.store_upload(
            session,
            _file_chunks(upload),
            filename=upload.filename or "upload.npz",
            name=name or (form_name if isinstance(form_name, str) and form_name else None),
            settings=settings,
            owner=owner.name,
        )
    elif content_type.startswith("application/octet-stream"):
        dataset = await dataset_service.store_upload(
            session,
            request.stream(),
            filename=filename or "upload.npz",
            name=name,
            settings=settings,
            owner=owner.name,
        )
    else:
        raise Unprocessable(
            f"unsupported content type {content_type!r}: "
            "send multipart/form-data or application/octet-stream",
            loc=("header", "content-type"),
        )
    return dataset_service.upload_public(dataset)


@router.get("", response_model=Page[DatasetPublic])
def list_datasets(
    session: SessionDep,
    current: CurrentOwner,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    owner: Annotated[
        str | None, Query(max_length=64, description="Admins: only this owner's uploads")
    ] = None,
) -> dict[str, Any]:
    """Built-in datasets (first page only), then the owner's uploads (an admin's: everyone's) newest first."""
    items, next_cursor = dataset_service.list_datasets(
        session, limit=limit, cursor=cursor, owner=listed_owner(current, owner)
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, _owner: DatasetAccess) -> dict[str, Any]:
    return dataset_service.get_dataset(session, dataset_id)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: str, session: SessionDep, _owner: DatasetAccess) -> Response:
    """Remove an uploaded dataset and free its file (409 while a search that has not finished uses it,
    and for a built-in)."""
    dataset_service.delete_dataset(session, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
