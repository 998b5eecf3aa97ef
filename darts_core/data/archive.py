"""Extracting an uploaded ``.zip`` / ``.tar`` / ``.tar.gz`` of an image folder without trusting it.

Every member is checked before a byte is written: its name (UTF-8, relative, no ``..``), its kind
(regular files and folders only: no symbolic or hard links, devices, fifos or sparse files), their
number (``max_files``) and the total uncompressed size their headers announce (``max_bytes``). The
bytes are counted again while they are copied, since a header can lie: a member that inflates past
what its header said, or past ``max_bytes`` in all, stops the extraction. On any error the destination
is removed, so nothing is left behind. :func:`tar_stream` goes the other way for the client: a folder
packed as a tar on the fly. Standard library only (no numpy, no torch).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

__all__ = [
    "ARCHIVE_SUFFIXES",
    "ArchiveError",
    "ArchiveTooLarge",
    "archive_suffix",
    "extract_archive",
    "folder_files",
    "is_ignored",
    "tar_size",
    "tar_stream",
]

#: The file names an archive upload may have (lower case).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

_COPY_CHUNK = 1 << 20
_UTF8_FLAG = 0x800  # zip general purpose bit 11: the name is UTF-8


class ArchiveError(ValueError):
    """The archive cannot be extracted safely; the message names the member and the problem."""


class ArchiveTooLarge(ArchiveError):
    """The archive has more members than ``max_files`` or inflates past ``max_bytes``."""


def archive_suffix(filename: str) -> str | None:
    """The archive suffix of ``filename`` (one of :data:`ARCHIVE_SUFFIXES`), or None."""
    lower = filename.lower()
    return next((suffix for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True)
                 if lower.endswith(suffix)), None)


def is_ignored(parts: tuple[str, ...]) -> bool:
    """Whether a member path (its components) is clutter an archiver adds: ``__MACOSX/``, hidden files
    and folders (``.DS_Store``, ``._*``, ``.git/``)."""
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


@dataclass(frozen=True)
class _Member:
    """One archive member as checked: its safe relative path, kind and announced size."""

    parts: tuple[str, ...]
    is_dir: bool
    size: int
    source: zipfile.ZipInfo | tarfile.TarInfo

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def _safe_parts(name: str) -> tuple[str, ...]:
    """The components of a member name, refused when it could leave the destination."""
    if "\x00" in name:
        raise ArchiveError(f"member {name!r}: NUL character in its name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as error:  # tarfile's surrogate escapes of undecodable bytes
        raise ArchiveError(f"member {name!r}: its name is not UTF-8") from error
    posix = name.replace("\\", "/")  # some Windows archivers write backslashes
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise ArchiveError(f"member {name!r}: absolute path")
    parts = tuple(part for part in PurePosixPath(posix).parts if part not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"member {name!r}: '..' in its path")
    if not parts:
        raise ArchiveError(f"member {name!r}: empty path")
    return parts


def _zip_name(info: zipfile.ZipInfo) -> str:
    if info.flag_bits & _UTF8_FLAG:
        return info.filename
    # Without the flag zipfile decoded the raw bytes as cp437; many archivers write UTF-8 anyway.
    raw = info.filename.encode("cp437")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ArchiveError(f"member {raw.decode('utf-8', 'replace')!r}: its name is not UTF-8") from error


def _zip_members(archive: zipfile.ZipFile, max_files: int) -> list[_Member]:
    infos = archive.infolist()
    if len(infos) > max_files:
        raise ArchiveTooLarge(f"archive has {len(infos)} members, more than the limit of {max_files}")
    members = []
    for info in infos:
        name = _zip_name(info)
        parts = _safe_parts(name)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise ArchiveError(f"member {name!r}: symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(f"member {name!r}: not a regular file or folder (device, fifo or socket)")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"member {name!r}: encrypted")
        is_dir = info.is_dir() or kind == stat.S_IFDIR
        members.append(_Member(parts, is_dir, 0 if is_dir else info.file_size, info))
    return members


def _tar_members(archive: tarfile.TarFile, max_files: int, max_bytes: int) -> list[_Member]:
    # Member by member, so a listing that would inflate past the limits stops as soon as it passes them.
    members: list[_Member] = []
    total = 0
    while (info := _next_tar_member(archive, members)) is not None:
        if len(members) >= max_files:
            raise ArchiveTooLarge(f"archive has more than the limit of {max_files} members")
        parts = _safe_parts(info.name)
        if info.issym():
            raise ArchiveError(f"member {info.name!r}: symbolic link (to {info.linkname!r})")
        if info.islnk():
            raise ArchiveError(f"member {info.name!r}: hard link (to {info.linkname!r})")
        if info.ischr() or info.isblk() or info.isfifo():
            raise ArchiveError(f"member {info.name!r}: device or fifo")
        if info.issparse() or not (info.isreg() or info.isdir()):
            raise ArchiveError(f"member {info.name!r}: not a regular file or folder")
        total += info.size if info.isreg() else 0
        if total > max_bytes:
            raise ArchiveTooLarge(_too_large(max_bytes, info.name))
        members.append(_Member(parts, info.isdir(), info.size if info.isreg() else 0, info))
    return members


def _next_tar_member(archive: tarfile.TarFile, members: list[_Member]) -> tarfile.TarInfo | None:
    try:
        return archive.next()
    except (tarfile.TarError, EOFError, OSError) as error:
        where = f"after member {members[-1].name!r}" if members else "at its start"
        raise ArchiveError(f"corrupt or truncated tar archive {where}: {error}") from error


def _too_large(max_bytes: int, name: str) -> str:
    return f"archive inflates to more than the limit of {max_bytes} bytes (at member {name!r})"


def _check_tree(members: list[_Member], max_bytes: int) -> None:
    """No path twice, no file where a folder is needed, the announced total within ``max_bytes``."""
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    total = 0
    for member in members:
        total += member.size
        if total > max_bytes:
            raise ArchiveTooLarge(_too_large(max_bytes, member.name))
        if member.is_dir:
            if member.parts in files:
                raise ArchiveError(f"member {member.name!r}: both a file and a folder")
            dirs.add(member.parts)
            continue
        if member.parts in files or member.parts in dirs:
            raise ArchiveError(f"member {member.name!r}: appears twice")
        files.add(member.parts)
    for parts in files:
        for depth in range(1, len(parts)):
            if parts[:depth] in files:
                raise ArchiveError(f"member {'/'.join(parts[:depth])!r}: both a file and a folder")


def _copy(source: IO[bytes], target: Path, member: _Member, budget: int) -> int:
    """Copy one member, counting its bytes: more than its header announced, or than `budget`, stops."""
    written = 0
    with target.open("xb") as out:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > member.size:
                raise ArchiveError(
                    f"member {member.name!r}: inflates past the {member.size} bytes its header announces"
                )
            if written > budget:
                raise ArchiveTooLarge(_too_large(budget, member.name))
            out.write(chunk)
    if written != member.size:
        raise ArchiveError(f"member {member.name!r}: truncated ({written} of {member.size} bytes)")
    return written


@contextmanager
def _opened(archive: Path) -> Iterator[zipfile.ZipFile | tarfile.TarFile]:
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as opened:
                yield opened
        except zipfile.BadZipFile as error:
            raise ArchiveError(f"corrupt zip archive: {error}") from error
        return
    try:
        with tarfile.open(archive, mode="r:*", encoding="utf-8", errors="surrogateescape") as tar:
            yield tar
    except (tarfile.TarError, EOFError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ArchiveError(f"not a readable zip or tar archive: {error}") from error


def extract_archive(
    archive: str | os.PathLike[str], dest: str | os.PathLike[str], *, max_files: int, max_bytes: int
) -> Path:
    """Extract a ``.zip``, ``.tar`` or compressed ``.tar`` (told apart by content) into ``dest``.

    Args:
        archive: the archive file.
        dest: a folder that must not exist yet; it is created, and removed again on any error.
        max_files: most members the archive may have (folders and ignored members count).
        max_bytes: most uncompressed bytes in all, checked against the headers before anything is
            written and counted again while copying.

    ``__MACOSX/``, hidden files and folders (``.DS_Store``) are not extracted. When everything extracted
    sits in one top folder, that folder is returned (the classes are its sub-folders); else ``dest``.

    Raises:
        ArchiveError: naming the member: ``..`` or an absolute path, a link, a device or fifo, a name
            that is not UTF-8, more than ``max_files`` members, more than ``max_bytes`` bytes, a member
            that inflates past its header, a corrupt archive.
        FileExistsError: ``dest`` exists.
    """
    if max_files < 1 or max_bytes < 0:
        raise ValueError(f"max_files must be >= 1 and max_bytes >= 0, got {max_files} and {max_bytes}")
    source, root = Path(archive), Path(dest)
    root.mkdir(parents=True)
    try:
        with _opened(source) as opened:
            if isinstance(opened, zipfile.ZipFile):
                members = _zip_members(opened, max_files)
            else:
                members = _tar_members(opened, max_files, max_bytes)
            _check_tree(members, max_bytes)
            _extract(opened, members, root, max_bytes)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return _unwrapped(root)


def _extract(
    opened: zipfile.ZipFile | tarfile.TarFile, members: list[_Member], root: Path, max_bytes: int
) -> None:
    left = max_bytes
    for member in members:
        if is_ignored(member.parts):
            continue
        target = root.joinpath(*member.parts)
        try:
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with _member_file(opened, member) as data:
                left -= _copy(data, target, member, left)
        except ArchiveError:
            raise
        except zipfile.BadZipFile as error:  # zipfile stops at the announced size; the CRC then differs
            raise ArchiveError(
                f"member {member.name!r}: its data does not match its header (corrupt, or larger than "
                f"the {member.size} bytes it announces): {error}"
            ) from error
        except (OSError, tarfile.TarError, EOFError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise ArchiveError(f"member {member.name!r}: cannot extract it ({reason})") from error


@contextmanager
def _member_file(opened: zipfile.ZipFile | tarfile.TarFile, member: _Member) -> Iterator[IO[bytes]]:
    if isinstance(opened, zipfile.ZipFile):
        assert isinstance(member.source, zipfile.ZipInfo)
        with opened.open(member.source) as zipped:
            yield zipped
        return
    assert isinstance(member.source, tarfile.TarInfo)
    tarred = opened.extractfile(member.source)
    if tarred is None:  # regular files always have one; checked above
        raise ArchiveError(f"member {member.name!r}: no data")
    with tarred:
        yield tarred


def _unwrapped(root: Path) -> Path:
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return root


class _Chunks:
    """A write-only file that keeps what it is given until it is drained (tarfile's stream target)."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.pending.append(bytes(data))
        return len(data)

    def drain(self) -> Iterator[bytes]:
        pending, self.pending = self.pending, []
        yield from pending


def folder_files(directory: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """The regular files below ``directory`` that :func:`tar_stream` packs, sorted, and the entries it
    leaves out (symbolic links, devices, ...). Hidden files and folders are neither: they are ignored."""
    files: list[Path] = []
    left_out: list[Path] = []
    top = Path(directory)
    for current, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for entry in [*(Path(current) / d for d in dirs), *(Path(current) / n for n in sorted(names))]:
            if entry.name.startswith(".") or not entry.is_symlink() and entry.is_dir():
                continue
            (files if entry.is_file() and not entry.is_symlink() else left_out).append(entry)
    return files, left_out


def tar_size(files: list[Path], top: Path) -> int:
    """About the bytes :func:`tar_stream` yields for ``files`` (headers, padded data, end blocks)."""
    size = 2 * tarfile.BLOCKSIZE
    for path in files:
        name_blocks = 0 if len(path.relative_to(top.parent).as_posix()) < 100 else 3  # a pax header
        size += (1 + name_blocks) * tarfile.BLOCKSIZE + -(-path.stat().st_size // tarfile.BLOCKSIZE) * 512
    return -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def tar_stream(directory: str | os.PathLike[str], files: list[Path] | None = None) -> Iterator[bytes]:
    """``directory`` as an uncompressed tar, produced piece by piece as it is read (no temporary file):
    its regular files (``files``, by default :func:`folder_files`'), under a top folder of its name."""
    top = Path(directory)
    if files is None:
        files, _ = folder_files(top)
    sink = _Chunks()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path in files:
            info = tar.gettarinfo(str(path), arcname=path.relative_to(top.parent).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as handle:
                tar.addfile(info, handle)
            yield from sink.drain()
    yield from sink.drain()
