"""`/datasets`: upload an `.npz` or an archive of an image folder, list and read uploaded and built-in
datasets."""

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
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "the .npz, or a .zip / .tar / .tar.gz / .tgz of an image folder",
                        },
                        "name": {"type": "string", "description": "defaults to the file name"},
                        "image_size": {"type": "integer", "description": "archives: resize images to this"},
                        "channels": {"type": "integer", "enum": [1, 3], "description": "archives: 1 or 3"},
                    },
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "the raw .npz or archive, streamed; `?filename=` (its suffix tells which) and "
                "`?name=` describe it",
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
    image_size: Annotated[
        int | None,
        Query(ge=dataset_service.IMAGE_SIZES[0], le=dataset_service.IMAGE_SIZES[1],
              description="archives: the side every image is resized to (needed when sizes differ)"),
    ] = None,
    channels: Annotated[
        int | None, Query(ge=1, le=3, description="archives: 1 (grey) or 3 (RGB); default: from the images")
    ] = None,
) -> dict[str, Any]:
    """Upload an `.npz` with `x` (N x C x H x W or N x H x W x C, uint8 or float) and `y` (N int labels),
    or a `.zip` / `.tar` / `.tar.gz` of an image folder (`<class>/<image>`, optionally `train/` + `test/`).

    Multipart (field `file`, optional field `name`) or the raw file as `application/octet-stream`; both
    are streamed to the artifact store as they arrive (chunked bodies too). It belongs to the key's
    owner. 413 as soon as the body passes MAX_UPLOAD_BYTES or the owner's MAX_DATASET_BYTES_PER_OWNER;
    422 when darts_core cannot use it (checked from the `.npy` headers first, then in bounded chunks: at
    most MAX_DATASET_VALUES values, labels below MAX_CLASSES). An archive is extracted (413 past
    MAX_DATASET_FILES members or MAX_DATASET_UNCOMPRESSED_BYTES; 422 for links, `..`, absolute or non-UTF-8
    names, naming the member), decoded once and stored as a uint8 `.npz`; the answer gives its classes,
    their counts, the image size and the files skipped. `image_size` and `channels`: query parameters,
    or form fields of a multipart upload.
    """
    if channels == 2:
        raise Unprocessable("channels must be 1 or 3", loc=("query", "channels"))
    content_type = request.headers.get("content-type", "")
    hook = getattr(request.app.state, "before_upload_validation", None)
    if content_type.startswith("multipart/form-data"):
        form = MultipartUpload(content_type)
        dataset, skipped = await dataset_service.store_upload(
            session,
            form.file_chunks(request.stream()),
            filename=None,
            name=name,
            settings=settings,
            owner=owner.name,
            form=form,
            before_validation=hook,
            image_size=image_size,
            channels=channels,
        )
    elif content_type.startswith("application/octet-stream"):
        dataset, skipped = await dataset_service.store_upload(
            session,
            request.stream(),
            filename=filename or "upload.npz",
            name=name,
            settings=settings,
            owner=owner.name,
            before_validation=hook,
            image_size=image_size,
            channels=channels,
        )
    else:
        raise Unprocessable(
            "unsupported content type: send multipart/form-data or application/octet-stream",
            loc=("header", "content-type"),
        )
    return dataset_service.upload_public(dataset, skipped)


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
    """Remove an uploaded dataset and free its file (409 while a search, a training or a study that has
    not finished needs it, and for a built-in)."""
    dataset_service.delete_dataset(session, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
