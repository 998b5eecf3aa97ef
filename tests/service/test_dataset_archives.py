"""`POST /datasets` with a `.zip` / `.tar` / `.tar.gz` of an image folder: decoded once into the stored
uint8 `.npz`; hostile archives are a 4xx naming the problem, with no row and no file left behind."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from app.models import Dataset, Search
from app.settings import Settings


def png(value: int, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=(value, 255 - value, 0) if mode == "RGB" else value).save(buffer, "PNG")
    return buffer.getvalue()


def folder_members(classes: dict[str, int]) -> dict[str, bytes]:
    return {f"pets/{name}/{i}.png": png(i * 40) for name, count in classes.items() for i in range(count)}


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w", extra: tuple[tarfile.TarInfo, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return buffer.getvalue()


def left_behind(settings: Settings) -> list[Path]:
    """Every file under the artifact dir's datasets/ and tmp/ folders."""
    found: list[Path] = []
    for sub in ("datasets", "tmp"):
        directory = settings.artifacts_path / sub
        if directory.exists():
            found.extend(path for path in directory.rglob("*") if path.is_file())
    return sorted(found)


@pytest.mark.parametrize("form", ["pets.zip", "pets.tar", "pets.tar.gz"])
def test_an_archive_is_decoded_into_a_uint8_npz_with_its_classes(
    client: TestClient, api_settings: Settings, db_session: Session, form: str
) -> None:
    members = folder_members({"cat": 3, "dog": 2})
    members |= {"pets/dog/notes.txt": b"no image", "pets/.DS_Store": b"x"}
    mode = "w:gz" if "gz" in form else "w"
    body = zip_bytes(members) if form.endswith(".zip") else tar_bytes(members, mode)
    before = left_behind(api_settings)
    response = client.post("/datasets", files={"file": (form, body)})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["name"] == "pets" and dataset["filename"] == form
    assert dataset["class_names"] == ["cat", "dog"] and dataset["class_counts"] == {"cat": 3, "dog": 2}
    assert (dataset["num_samples"], dataset["num_classes"]) == (5, 2)
    assert (dataset["channels"], dataset["height"], dataset["width"]) == (3, 8, 8)
    assert dataset["skipped"]["count"] == 1 and dataset["skipped"]["first"][0].startswith("dog/notes.txt")

    stored = Path(db_session.get(Dataset, dataset["id"]).path)
    assert left_behind(api_settings) == sorted([*before, stored])  # the temporary folder is gone
    assert dataset["size_bytes"] == stored.stat().st_size
    with np.load(stored) as arrays:
        assert arrays["x_train"].dtype == np.uint8 and arrays["x_train"].shape == (5, 3, 8, 8)
        assert list(arrays["class_names"]) == ["cat", "dog"]

    # The names are in the dataset's resource, and in the searches and trainings that use it.
    read = client.get(f"/datasets/{dataset['id']}").json()
    assert read["class_names"] == ["cat", "dog"] and read["skipped"] is None
    listed = client.get("/datasets").json()["items"]
    assert [item["class_names"] for item in listed if item["id"] == dataset["id"]] == [["cat", "dog"]]


def test_class_names_reach_the_search_and_training_resources(client: TestClient, db_session: Session) -> None:
    body = tar_bytes(folder_members({"cat": 2, "dog": 2, "owl": 2}))
    dataset_id = client.post("/datasets", files={"file": ("pets.tar", body)}).json()["id"]
    search = client.post("/searches", json={"dataset": {"id": dataset_id}})
    assert search.status_code == 201, search.text
    assert search.json()["class_names"] == ["cat", "dog", "owl"]
    assert client.get(f"/searches/{search.json()['id']}").json()["class_names"] == ["cat", "dog", "owl"]
    assert db_session.get(Search, search.json()["id"]).class_names == ["cat", "dog", "owl"]
    from tests.service.conftest import GENOTYPE_TEMPLATE

    training = client.post("/trainings", json={"genotype": GENOTYPE_TEMPLATE, "dataset": {"id": dataset_id}})
    assert training.status_code == 201, training.text
    assert training.json()["class_names"] == ["cat", "dog", "owl"]
    digits = client.post("/searches", json={"dataset": {"name": "digits"}}).json()
    assert digits["class_names"] is None


def test_mixed_sizes_need_image_size_given_as_a_form_field_or_query(client: TestClient) -> None:
    members = {"a/1.png": png(1, (8, 8)), "a/2.png": png(2, (12, 10)), "b/1.png": png(3), "b/2.png": png(4)}
    refused = client.post("/datasets", files={"file": ("m.zip", zip_bytes(members))})
    assert refused.status_code == 422 and "image_size" in refused.json()["detail"][0]["msg"]
    form = client.post("/datasets", files={"file": ("m.zip", zip_bytes(members))}, data={"image_size": "6"})
    assert form.status_code == 201, form.text
    assert (form.json()["height"], form.json()["width"]) == (6, 6)
    raw = client.post(
        "/datasets",
        params={"filename": "m.zip", "image_size": 5, "channels": 1},
        content=zip_bytes(members),
        headers={"content-type": "application/octet-stream"},
    )
    assert raw.status_code == 201, raw.text
    assert (raw.json()["channels"], raw.json()["height"]) == (1, 5)
    bad = client.post("/datasets", files={"file": ("m.zip", zip_bytes(members))}, data={"channels": "2"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "channels"]


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


GOOD = {"cat/1.png": png(1), "cat/2.png": png(2), "dog/1.png": png(3), "dog/2.png": png(4)}


@pytest.mark.parametrize(
    ("filename", "body", "status", "message"),
    [
        ("a.zip", zip_bytes({**GOOD, "../evil.png": png(5)}), 422, "'..' in its path"),
        ("a.tar", tar_bytes({**GOOD, "/etc/evil.png": png(5)}), 422, "absolute path"),
        ("a.tar", tar_bytes(GOOD, extra=(_special("cat/x.png", tarfile.SYMTYPE, "/etc/passwd"),)), 422,
         "symbolic link"),
        ("a.tar", tar_bytes(GOOD, extra=(_special("cat/x.png", tarfile.LNKTYPE, "cat/1.png"),)), 422,
         "hard link"),
        ("a.tar", tar_bytes(GOOD, extra=(_special("cat/x.png", tarfile.CHRTYPE),)), 422, "device or fifo"),
        ("a.tgz", tar_bytes({**GOOD, **{f"dog/{i}.txt": b"x" for i in range(20)}}, "w:gz"), 413,
         "more than the limit of 10 members"),
        ("a.zip", zip_bytes({**GOOD, "dog/big.png": b"\0" * 50_000}), 413,
         "more than the limit of 20000 bytes"),
        ("a.zip", zip_bytes({"cat/1.png": png(1), "cat/2.png": png(2), "dog/1.png": png(3)}), 422,
         "needs at least 2 images"),
        ("a.zip", zip_bytes({**GOOD, "dog/3.png": png(1)[:40]}), 422, "dog/3.png"),
        ("a.zip", zip_bytes({f"c{i}/{j}.png": png(j) for i in range(4) for j in range(2)}), 422, "classes"),
        ("a.tar", b"not a tar at all" * 64, 422, "not a readable zip or tar archive"),
    ],
    ids=["parent", "absolute", "symlink", "hardlink", "device", "members", "bytes", "small class",
         "truncated image", "classes", "junk"],
)
def test_a_hostile_archive_is_refused_and_leaves_nothing(
    app_client, auth_headers: dict[str, str], api_settings: Settings, db_session: Session,
    filename: str, body: bytes, status: int, message: str,
) -> None:
    limited = app_client(max_dataset_files=10, max_dataset_uncompressed_bytes=20_000, max_classes=3)
    before = left_behind(api_settings)
    response = limited.post("/datasets", files={"file": (filename, body)}, headers=auth_headers)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    text = detail if isinstance(detail, str) else detail[0]["msg"]
    assert message in text, text
    assert left_behind(api_settings) == before
    assert db_session.query(Dataset).count() == 0
