"""Datasets: `.npz` uploads and archives of image folders (streamed to the artifact store, validated or
decoded by darts_core) and built-ins."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import delete, exists, func, or_, select
from sqlalchemy.orm import Session

from app.db import affected_rows, utcnow
from app.lifecycle.status import TERMINAL
from app.models import Dataset, Search, Study, Training
from app.services.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable
from app.services.multipart import MultipartUpload
from app.services.pagination import encode_cursor, older_than
from app.settings import Settings
from app.storage import datasets_dir
from darts_core.data.archive import ArchiveError, ArchiveTooLarge, archive_suffix, extract_archive
from darts_core.spec.dataset_spec import builtin_datasets as core_builtin_datasets

logger = logging.getLogger(__name__)

LOC_FILE = ("body", "file")
INFO_FIELDS = ("num_samples", "num_classes", "channels", "height", "width")
MAX_NAME = 200  # the columns' sizes (app.models.Dataset)
MAX_FILENAME = 255
SKIPPED_SHOWN = 20  # skipped files named in an archive upload's answer
#: The sizes and channels an archive's images may be resized / converted to (`image_size`, `channels`).
IMAGE_SIZES = (4, 1024)
CHANNELS = (1, 3)


# The built-ins a search spec may name (app.schemas.searches); darts_core's cifar10 needs a server-side path.
SERVICE_BUILTINS = ("digits", "synthetic")


def builtin_datasets() -> list[dict[str, Any]]:
    """The darts_core datasets a spec can name."""
    return [info for info in core_builtin_datasets() if info["name"] in SERVICE_BUILTINS]


def builtin_public(info: dict[str, Any]) -> dict[str, Any]:
    """A built-in dataset as a `DatasetPublic` dict (its id is its name; sizes with default parameters)."""
    channels, height, width = info.get("shape") or (None, None, None)
    return {
        "id": info["name"],
        "kind": "builtin",
        "name": info["name"],
        "description": info.get("description"),
        "num_samples": info.get("num_samples"),
        "num_classes": info.get("num_classes"),
        "channels": channels,
        "height": height,
        "width": width,
        "parameters": info.get("parameters"),
    }


def upload_public(dataset: Dataset, skipped: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """An upload as a `DatasetPublic` dict; `skipped`: the files an archive upload left out (its answer)."""
    shown = None
    if skipped is not None:
        first = [f"{path}: {reason}" for path, reason in skipped[:SKIPPED_SHOWN]]
        shown = {"count": len(skipped), "first": first}
    return {
        "id": dataset.id,
        "kind": "upload",
        "name": dataset.name,
        "filename": dataset.filename,
        "owner": dataset.owner,
        "num_samples": dataset.num_samples,
        "num_classes": dataset.num_classes,
        "channels": dataset.channels,
        "height": dataset.height,
        "width": dataset.width,
        "size_bytes": dataset.size_bytes,
        "created_at": dataset.created_at,
        "class_names": dataset.class_names,
        "class_counts": dataset.class_counts,
        "skipped": shown,
    }


def too_large_message(settings: Settings) -> str:
    return f"upload larger than the limit of {settings.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)"


def quota_message(settings: Settings, used: int) -> str:
    return (
        f"upload over your dataset storage quota of {settings.max_dataset_bytes_per_owner} bytes "
        f"(MAX_DATASET_BYTES_PER_OWNER; {used} bytes in use): delete a dataset with DELETE /datasets/{{id}}"
    )


def bytes_used(session: Session, owner: str) -> int:
    """The bytes of `owner`'s uploaded datasets (what MAX_DATASET_BYTES_PER_OWNER bounds)."""
    total = select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.owner == owner)
    return int(session.scalar(total) or 0)


_validation_limiter: anyio.CapacityLimiter | None = None
VALIDATIONS_AT_ONCE = 4  # each holds at most a few chunks (darts_core.data.npz.CHUNK_BYTES) in memory


def _limiter() -> anyio.CapacityLimiter:
    global _validation_limiter
    if _validation_limiter is None:
        _validation_limiter = anyio.CapacityLimiter(VALIDATIONS_AT_ONCE)
    return _validation_limiter


def _check_names(filename: str, name: str | None) -> str:
    filename = Path(filename).name  # never a path: only the last component is kept
    if not filename.lower().endswith(".npz") and archive_suffix(filename) is None:
        message = f"expected a .npz, .zip, .tar, .tar.gz or .tgz file, got {filename!r}"
        raise Unprocessable(message, loc=LOC_FILE)
    if len(filename) > MAX_FILENAME:
        raise Unprocessable(f"file name longer than {MAX_FILENAME} characters", loc=LOC_FILE)
    if name is not None and not 1 <= len(name) <= MAX_NAME:
        raise Unprocessable(f"name must have 1 to {MAX_NAME} characters", loc=("body", "name"))
    for value, loc in ((filename, LOC_FILE), (name or "", ("body", "name"))):
        if "\x00" in value:
            raise Unprocessable("must not contain the NUL character", loc=loc, error_type="string_nul")
    return filename


async def store_upload(
    session: Session,
    chunks: AsyncIterator[bytes],
    *,
    filename: str | None,
    name: str | None,
    settings: Settings,
    owner: str,
    form: MultipartUpload | None = None,
    before_validation: Callable[[], None] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> tuple[Dataset, list[tuple[str, str]] | None]:
    """Write an upload to the artifact store chunk by chunk, validate or decode it, record it as
    `owner`'s at `ARTIFACT_DIR/datasets/{id}.npz`; returns it and, for an archive, the skipped files.

    The size caps apply while the bytes arrive: over `settings.max_upload_bytes`, or over what is left
    of the owner's `settings.max_dataset_bytes_per_owner` -> PayloadTooLarge (413) at once. A multipart
    upload (`form`) names its file and its `name`, `image_size`, `channels` fields as it streams; they are
    read from `form` once the body is in. Then, off the event loop (a thread, at most
    VALIDATIONS_AT_ONCE at a time): an `.npz` is validated with bounded memory
    (darts_core.data.registry.validate_npz); a `.zip` / `.tar` / `.tar.gz` is extracted into a temporary
    folder under the artifact dir (darts_core.data.archive: MAX_DATASET_FILES members,
    MAX_DATASET_UNCOMPRESSED_BYTES; 413 past either), decoded once (darts_core.data.folder, at most
    MAX_CLASSES classes; `image_size` and `channels` resize and convert) and stored as the uint8 `.npz`;
    the temporary folder is always removed. Not usable -> Unprocessable (422) naming the member or file.
    Either way nothing is left and nothing recorded. `before_validation` (tests, instrumentation) runs in
    the validation's thread just before it starts.
    """
    if filename is not None:
        _check_names(filename, name)  # a raw upload is refused before a byte is stored
    dataset_id = str(uuid.uuid4())
    directory = datasets_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dataset_id}.npz"
    received = directory / f"{dataset_id}.upload"
    work = settings.artifacts_path / "tmp" / f"upload-{dataset_id}"
    size = 0
    used = bytes_used(session, owner)
    session.commit()  # ends the read transaction: nothing holds the database while the body streams
    quota_left = settings.max_dataset_bytes_per_owner - used
    try:
        with received.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise PayloadTooLarge(too_large_message(settings))
                if size > quota_left:
                    raise PayloadTooLarge(quota_message(settings, used))
                out.write(chunk)
        if form is not None:
            name = name or form.fields.get("name") or None
            filename = form.filename or "upload.npz"
            image_size = image_size if image_size is not None else _form_int(form, "image_size", IMAGE_SIZES)
            channels = channels if channels is not None else _form_int(form, "channels", CHANNELS)
        filename = _check_names(filename or "upload.npz", name)
        if size == 0:
            raise Unprocessable("the uploaded file is empty", loc=LOC_FILE)
        is_archive = archive_suffix(filename) is not None

        def validate() -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
            if before_validation is not None:
                before_validation()
            if not is_archive:
                received.replace(path)
                return _validate_npz(path, settings), None
            try:
                return _decode_archive(received, work, path, settings, image_size, channels)
            finally:
                received.unlink(missing_ok=True)
                shutil.rmtree(work, ignore_errors=True)

        info, skipped = await anyio.to_thread.run_sync(validate, limiter=_limiter())
        stored = path.stat().st_size
        # Again, with what other uploads of the same owner stored meanwhile (and the decoded size).
        used = bytes_used(session, owner)
        if used + stored > settings.max_dataset_bytes_per_owner:
            raise PayloadTooLarge(quota_message(settings, used))
        dataset = Dataset(
            id=dataset_id,
            name=name or _stem(filename)[:MAX_NAME] or dataset_id,
            owner=owner,
            filename=filename,
            path=str(path),
            num_samples=int(info["num_samples"]),
            num_classes=int(info["num_classes"]),
            channels=int(info["channels"]),
            height=int(info["height"]),
            width=int(info["width"]),
            size_bytes=stored,
            created_at=utcnow(),
            class_names=info.get("class_names"),
            class_counts=info.get("class_counts"),
        )
        session.add(dataset)
        session.commit()
    except BaseException:
        received.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dataset, skipped


def _stem(filename: str) -> str:
    suffix = archive_suffix(filename)
    return filename[: -len(suffix)] if suffix else Path(filename).stem


def _form_int(form: MultipartUpload, field: str, allowed: tuple[int, ...]) -> int | None:
    """An integer form field (`image_size`: within the range `allowed`; `channels`: one of them)."""
    text = form.fields.get(field)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise Unprocessable(f"{field} must be an integer", loc=("body", field)) from exc
    if field == "image_size" and not allowed[0] <= value <= allowed[1]:
        raise Unprocessable(f"image_size must be from {allowed[0]} to {allowed[1]}", loc=("body", field))
    if field == "channels" and value not in allowed:
        expected = f"one of {list(allowed)}"
        raise Unprocessable(f"{field} must be {expected}, got {value}", loc=("body", field))
    return value


def _decode_archive(
    archive: Path, work: Path, path: Path, settings: Settings, image_size: int | None, channels: int | None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Extract `archive` into `work`, decode its image folder once, store it as the `.npz` at `path`."""
    from darts_core.data.folder import FolderError, read_image_folder, save_image_folder_npz

    try:
        root = extract_archive(
            archive,
            work,
            max_files=settings.max_dataset_files,
            max_bytes=settings.max_dataset_uncompressed_bytes,
        )
    except ArchiveTooLarge as exc:
        limits = "MAX_DATASET_FILES, MAX_DATASET_UNCOMPRESSED_BYTES"
        raise PayloadTooLarge(f"invalid archive: {exc} ({limits})") from exc
    except ArchiveError as exc:
        raise Unprocessable(f"invalid archive: {exc}", loc=LOC_FILE, error_type="invalid_dataset") from exc
    try:
        folder = read_image_folder(
            root,
            image_size=image_size,
            channels=channels,
            max_classes=settings.max_classes,
            max_values=settings.max_dataset_values,
        )
    except FolderError as exc:
        message = f"invalid image folder: {exc}"
        raise Unprocessable(message, loc=LOC_FILE, error_type="invalid_dataset") from exc
    save_image_folder_npz(folder, path)
    height, width = folder.image_size
    info = {
        "num_samples": folder.num_samples,
        "num_classes": len(folder.class_names),
        "channels": folder.channels,
        "height": height,
        "width": width,
        "class_names": folder.class_names,
        "class_counts": folder.class_counts,
    }
    return info, folder.skipped


def _validate_npz(path: Path, settings: Settings) -> dict[str, Any]:
    from darts_core.data.registry import DatasetError, validate_npz

    try:
        info = validate_npz(path, max_values=settings.max_dataset_values, max_classes=settings.max_classes)
    except DatasetError as exc:
        # darts_core's message names the array and the problem; the file's path is never in it.
        raise Unprocessable(f"invalid dataset: {exc}", loc=LOC_FILE, error_type="invalid_dataset") from exc
    except Exception as exc:  # a file numpy cannot even read: the reason stays in the log
        logger.info("upload %s is not a readable .npz", path.name, exc_info=True)
        message = "invalid dataset: not a readable .npz file"
        raise Unprocessable(message, loc=LOC_FILE, error_type="invalid_dataset") from exc
    if not isinstance(info, dict):  # darts_core may return a small dataclass
        info = {key: getattr(info, key) for key in INFO_FIELDS}
    return info


def list_datasets(
    session: Session, *, limit: int, cursor: str | None = None, owner: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Built-ins first (on the first page), then uploads (only `owner`'s when given) newest first."""
    items: list[dict[str, Any]] = []
    if cursor is None:
        items.extend(builtin_public(info) for info in builtin_datasets())
    query = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit + 1)
    if owner is not None:
        query = query.where(Dataset.owner == owner)
    if cursor is not None:
        query = query.where(older_than(Dataset.created_at, Dataset.id, cursor))
    uploads = list(session.scalars(query))
    next_cursor = None
    if len(uploads) > limit:
        uploads = uploads[:limit]
        next_cursor = encode_cursor(uploads[-1].created_at, uploads[-1].id)
    items.extend(upload_public(dataset) for dataset in uploads)
    return items, next_cursor


def get_dataset(session: Session, dataset_id: str) -> dict[str, Any]:
    for info in builtin_datasets():
        if info["name"] == dataset_id:
            return builtin_public(info)
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id!r} not found")
    return upload_public(dataset)


def _uploads_named_by(study_spec: dict[str, Any]) -> set[str]:
    """The uploaded datasets' ids a study's accepted spec names (its search's, selection's, final's)."""
    sections = (study_spec.get("search"), study_spec.get("selection"), study_spec.get("final"))
    datasets = [section.get("dataset") for section in sections if isinstance(section, dict)]
    return {dataset["id"] for dataset in datasets if isinstance(dataset, dict) and "id" in dataset}


def delete_dataset(session: Session, dataset_id: str) -> None:
    """Remove an uploaded dataset and its file. Conflict (409) for a built-in, and while a job that has
    not finished may need it: a search or a training that loads it, or a study whose search, selection or
    final training names it (whatever its stage: a study in its final stage with another final dataset
    is refused too, on the safe side). Every owner's studies are read, not only the upload's owner's: an
    admin may run jobs on another owner's upload.

    The searches and trainings are checked in the delete statement itself. What that leaves open is
    narrow: a job whose row is not yet committed when the statement runs (a study just committed whose
    searches are not, or a study naming the upload only in its selection or final), and then that job
    fails naming the missing dataset rather than running on nothing (tests/service/test_study_guards.py).
    """
    if any(info["name"] == dataset_id for info in builtin_datasets()):
        raise Conflict(f"dataset {dataset_id!r} is built in; only uploaded datasets can be deleted")
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id!r} not found")
    for study_id, spec in session.execute(select(Study.id, Study.spec).where(Study.status.not_in(TERMINAL))):
        if dataset_id in _uploads_named_by(spec):
            raise Conflict(
                f"dataset {dataset_id!r} is used by study {study_id!r}, which has not finished: cancel it "
                "or wait for it"
            )
    ref = f"upload:{dataset_id}"
    in_use = or_(
        exists().where(Search.dataset_ref == ref, Search.status.not_in(TERMINAL)),
        exists().where(Training.dataset_ref == ref, Training.status.not_in(TERMINAL)),
    )
    deleted = affected_rows(session.execute(delete(Dataset).where(Dataset.id == dataset_id, ~in_use)))
    session.commit()
    if deleted != 1:
        raise Conflict(
            f"dataset {dataset_id!r} is used by a search or a training that has not finished: cancel it "
            "or wait for it"
        )
    Path(dataset.path).unlink(missing_ok=True)
