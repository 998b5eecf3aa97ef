"""`/datasets`: upload an `.npz`, list and read uploaded and built-in datasets."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from app.auth import REQUIRE_OWNER, UNAUTHORIZED_RESPONSE, CurrentOwner, DatasetAccess, listed_owner
from app.db import SessionDep
from app.routes.deps import SettingsDep
from app.routes.responses import errors
from app.schemas.common import Page
from app.schemas.datasets import DatasetPublic
from app.services import datasets as dataset_service
from app.services.errors import Unprocessable
from app.services.multipart import MultipartUpload

router = APIRouter(
    prefix="/datasets", tags=["datasets"], dependencies=[REQUIRE_OWNER], responses=UNAUTHORIZED_RESPONSE
)

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


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    openapi_extra=_UPLOAD_BODY,
    responses=errors(413, 422),
)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    owner: CurrentOwner,
    filename: Annotated[
        str | None, Query(max_length=255, description="file name of a raw (octet-stream) upload")
    ] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> dict[str, Any]:
    """Upload an `.npz` with `x` (N x C x H x W or N x H x W x C, uint8 or float) and `y` (N int labels).

    Multipart (field `file`, optional field `name`) or the raw file as `application/octet-stream`; both
    are streamed to the artifact store as they arrive (chunked bodies too). It belongs to the key's
    owner. 413 as soon as the body passes MAX_UPLOAD_BYTES or the owner's MAX_DATASET_BYTES_PER_OWNER;
    422 when darts_core cannot use it (checked from the `.npy` headers first, then in bounded chunks: at
    most MAX_DATASET_VALUES values, labels below MAX_CLASSES).
    """
    content_type = request.headers.get("content-type", "")
    hook = getattr(request.app.state, "before_upload_validation", None)
    if content_type.startswith("multipart/form-data"):
        form = MultipartUpload(content_type)
        dataset = await dataset_service.store_upload(
            session,
            form.file_chunks(request.stream()),
            filename=None,
            name=name,
            settings=settings,
            owner=owner.name,
            form=form,
            before_validation=hook,
        )
    elif content_type.startswith("application/octet-stream"):
        dataset = await dataset_service.store_upload(
            session,
            request.stream(),
            filename=filename or "upload.npz",
            name=name,
            settings=settings,
            owner=owner.name,
            before_validation=hook,
        )
    else:
        raise Unprocessable(
            "unsupported content type: send multipart/form-data or application/octet-stream",
            loc=("header", "content-type"),
        )
    return dataset_service.upload_public(dataset)


@router.get("", response_model=Page[DatasetPublic], responses=errors(400))
def list_datasets(
    session: SessionDep,
    current: CurrentOwner,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    owner: Annotated[
        str | None, Query(max_length=64, description="Admins: only this owner's uploads")
    ] = None,
) -> dict[str, Any]:
    """Built-in datasets (first page only), then the owner's uploads (an admin's: everyone's) newest first.
    An empty cursor is none."""
    items, next_cursor = dataset_service.list_datasets(
        session, limit=limit, cursor=cursor or None, owner=listed_owner(current, owner)
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=errors(404))
def get_dataset(dataset_id: str, session: SessionDep, _owner: DatasetAccess) -> dict[str, Any]:
    return dataset_service.get_dataset(session, dataset_id)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409))
def delete_dataset(dataset_id: str, session: SessionDep, _owner: DatasetAccess) -> Response:
    """Remove an uploaded dataset and free its file (409 while a search that has not finished uses it,
    and for a built-in)."""
    dataset_service.delete_dataset(session, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
