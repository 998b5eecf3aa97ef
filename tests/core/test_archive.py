"""darts_core.data.archive: every hostile archive is built here and refused, leaving nothing behind."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from darts_core.data.archive import ArchiveError, archive_suffix, extract_archive

LIMITS = {"max_files": 50, "max_bytes": 100_000}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def add_tar_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar(
    path: Path, members: dict[str, bytes], *, special: tuple[tarfile.TarInfo, ...] = (), mode: str = "w"
) -> Path:
    options = {"format": tarfile.GNU_FORMAT, "encoding": "utf-8", "errors": "surrogateescape"}
    with tarfile.open(path, mode, **options) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            add_tar_file(tar, name, data)
        for info in special:
            tar.addfile(info)
    return path


GOOD = {"cat/1.png": b"a" * 100, "cat/2.png": b"b" * 100, "dog/1.png": b"c" * 100}


def refused(archive: Path, dest: Path, match: str, **limits: int) -> None:
    with pytest.raises(ArchiveError, match=match):
        extract_archive(archive, dest, **{**LIMITS, **limits})
    assert not dest.exists(), "a refused archive left files behind"


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


# --------------------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("form", ["zip", "tar", "tar.gz"])
def test_a_folder_of_classes_is_extracted(tmp_path: Path, form: str) -> None:
    members = {f"data/{name}": data for name, data in GOOD.items()}
    members |= {"data/.DS_Store": b"x", "__MACOSX/data/._1.png": b"x", "data/cat/.hidden": b"x"}
    if form == "zip":
        archive = write_zip(tmp_path / "a.zip", members)
    else:
        archive = write_tar(tmp_path / f"a.{form}", members, mode="w:gz" if form == "tar.gz" else "w")
    root = extract_archive(archive, tmp_path / "out", **LIMITS)
    # The single top folder is unwrapped; clutter is not extracted.
    assert root == tmp_path / "out" / "data"
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert found == sorted(GOOD)
    assert (root / "cat" / "1.png").read_bytes() == b"a" * 100
    assert not (tmp_path / "out" / "__MACOSX").exists()


def test_classes_at_the_top_are_not_unwrapped(tmp_path: Path) -> None:
    root = extract_archive(write_zip(tmp_path / "a.zip", GOOD), tmp_path / "out", **LIMITS)
    assert root == tmp_path / "out"
    assert sorted(p.name for p in root.iterdir()) == ["cat", "dog"]


def test_utf8_names_without_the_zip_flag_are_read_as_utf8(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "b.zip", {"cafXY/1.png": b"1", "dog/1.png": b"2"})
    archive.write_bytes(archive.read_bytes().replace(b"cafXY", "café".encode()))
    root = extract_archive(archive, tmp_path / "out", **LIMITS)
    assert (root / "café" / "1.png").read_bytes() == b"1"


def test_archive_suffixes() -> None:
    assert archive_suffix("Pets.TAR.GZ") == ".tar.gz"
    assert archive_suffix("a.tgz") == ".tgz"
    assert archive_suffix("a.zip") == ".zip"
    assert archive_suffix("a.npz") is None


# --------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize("name", ["../x.png", "cat/../../x.png", "..\\x.png"])
def test_parent_paths_are_refused(tmp_path: Path, name: str) -> None:
    refused(write_zip(tmp_path / "a.zip", {**GOOD, name: b"x"}), tmp_path / "out", r"'\.\.' in its path")
    refused(write_tar(tmp_path / "a.tar", {**GOOD, name: b"x"}), tmp_path / "out2", r"'\.\.' in its path")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name", ["/etc/x.png", "C:/x.png"])
def test_absolute_paths_are_refused(tmp_path: Path, name: str) -> None:
    refused(write_zip(tmp_path / "a.zip", {**GOOD, name: b"x"}), tmp_path / "out", "absolute path")
    refused(write_tar(tmp_path / "a.tar", {**GOOD, name: b"x"}), tmp_path / "out2", "absolute path")


def test_tar_symlinks_are_refused(tmp_path: Path) -> None:
    link = special("cat/evil.png", tarfile.SYMTYPE, "/etc/passwd")
    refused(write_tar(tmp_path / "a.tar", GOOD, special=(link,)), tmp_path / "out", "symbolic link")


def test_tar_hardlinks_are_refused(tmp_path: Path) -> None:
    link = special("cat/evil.png", tarfile.LNKTYPE, "cat/1.png")
    refused(write_tar(tmp_path / "a.tar", GOOD, special=(link,)), tmp_path / "out", "hard link")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_devices_and_fifos_are_refused(tmp_path: Path, kind: bytes) -> None:
    device = special("cat/dev.png", kind)
    device.devmajor, device.devminor = 1, 3
    refused(write_tar(tmp_path / "a.tar", GOOD, special=(device,)), tmp_path / "out", "device or fifo")


def test_zip_symlinks_and_devices_are_refused(tmp_path: Path) -> None:
    for kind, message in ((stat.S_IFLNK, "symbolic link"), (stat.S_IFCHR, "device"), (stat.S_IFIFO, "fifo")):
        archive = tmp_path / "a.zip"
        with zipfile.ZipFile(archive, "w") as out:
            for name, data in GOOD.items():
                out.writestr(name, data)
            info = zipfile.ZipInfo("cat/evil.png")
            info.external_attr = (kind | 0o777) << 16
            out.writestr(info, "/etc/passwd")
        refused(archive, tmp_path / "out", message)


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    members = {f"cat/{i}.png": b"x" for i in range(11)}
    for archive in (write_zip(tmp_path / "a.zip", members), write_tar(tmp_path / "a.tar", members)):
        refused(archive, tmp_path / "out", "more than the limit of 10", max_files=10)


def test_an_announced_size_over_the_limit_is_refused_before_writing(tmp_path: Path) -> None:
    members = {**GOOD, "dog/big.png": b"\0" * 2000}
    zipped = write_zip(tmp_path / "a.zip", members)
    for archive in (zipped, write_tar(tmp_path / "a.tgz", members, mode="w:gz")):
        refused(archive, tmp_path / "out", "more than the limit of 1000 bytes", max_bytes=1000)


def test_a_zip_whose_header_lies_about_the_size_is_stopped_while_copying(tmp_path: Path) -> None:
    """The directory says 10 bytes; the member inflates to 200,000 (a zip bomb in small)."""
    bomb = b"\0" * 200_000
    archive = write_zip(tmp_path / "a.zip", {**GOOD, "dog/bomb.png": bomb})
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo("dog/bomb.png")
    local = info.header_offset
    assert data[local : local + 4] == b"PK\x03\x04"
    data[local + 22 : local + 26] = (10).to_bytes(4, "little")  # the local header's uncompressed size
    central = data.index(b"PK\x01\x02")
    while True:  # the central directory entry of the bomb
        name_length = int.from_bytes(data[central + 28 : central + 30], "little")
        if bytes(data[central + 46 : central + 46 + name_length]) == b"dog/bomb.png":
            break
        central = data.index(b"PK\x01\x02", central + 4)
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with zipfile.ZipFile(archive) as opened:
        assert opened.getinfo("dog/bomb.png").file_size == 10  # the lie is what the headers say
    refused(archive, tmp_path / "out", "'dog/bomb.png': its data does not match its header", max_bytes=1000)


def test_a_tar_cut_short_is_refused_naming_the_member(tmp_path: Path) -> None:
    """A gzip stream cut short: the header announces 5,000 bytes, fewer arrive."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        add_tar_file(tar, "cat/1.png", b"a" * 100)
        add_tar_file(tar, "dog/1.png", b"b" * 5000)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(gzip.compress(raw.getvalue()[:2048]))
    refused(archive, tmp_path / "out", "truncated tar archive after member 'dog/1.png'")


@pytest.mark.parametrize("form", ["zip", "tar"])
def test_non_utf8_names_are_refused(tmp_path: Path, form: str) -> None:
    if form == "zip":
        archive = write_zip(tmp_path / "a.zip", {**GOOD, "cat/cafX.png": b"x"})
        archive.write_bytes(archive.read_bytes().replace(b"cafX", b"caf\xe9"))  # latin-1, no UTF-8 flag
    else:
        name = b"cat/caf\xe9.png".decode("utf-8", "surrogateescape")
        archive = write_tar(tmp_path / "a.tar", {**GOOD, name: b"x"})
    refused(archive, tmp_path / "out", "not UTF-8")


def test_a_path_twice_or_a_file_as_a_folder_is_refused(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "a.tar", {**GOOD, "cat": b"x"})
    refused(archive, tmp_path / "out", "both a file and a folder")
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as out, pytest.warns(UserWarning, match="Duplicate"):
        out.writestr("cat/1.png", b"1")
        out.writestr("cat/1.png", b"2")
    refused(tmp_path / "b.zip", tmp_path / "out", "appears twice")


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.zip").write_bytes(b"not an archive at all")
    refused(tmp_path / "a.zip", tmp_path / "out", "not a readable zip or tar archive")


def test_an_existing_destination_is_not_touched(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_bytes(b"k")
    with pytest.raises(FileExistsError):
        extract_archive(write_zip(tmp_path / "a.zip", GOOD), tmp_path / "out", **LIMITS)
    assert (tmp_path / "out" / "keep").read_bytes() == b"k"
