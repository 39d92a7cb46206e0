"""Split archives: a tar cut into numbered volumes for removable media, read back in place.

`FILE.tar` split at N bytes becomes `FILE.tar.001`, `FILE.tar.002`, … plus `FILE.tar.parts`
(JSON: every part's name, size and sha256, and the whole tar's size). Loading takes the first
part, the `.parts` file or the folder holding them; the set is checked complete before anything
is read, and reads go straight to the parts — no reassembled copy on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from transship import sizes
from transship.errors import IntegrityError, LayoutError, UsageError
from transship.fsutil import write_atomic
from transship.layout.reader import Extent
from transship.streams import CHUNK

PARTS_SUFFIX = ".parts"
PARTS_FORMAT = "transship-volumes/v1"
_PART = re.compile(r"^(?P<base>.+)\.(?P<n>\d{3})$")


def parse_size(text: str) -> int:
    """`--split-size`: `4G`, `700M`, `650MiB`, `1000000` → bytes (see `transship.sizes`)."""
    try:
        return sizes.parse_size(text, option="--split-size")
    except UsageError as error:
        raise LayoutError(str(error)) from None


def split_archive(tar: Path, part_size: int) -> list[Path]:
    """Cut `tar` into volumes of `part_size` bytes (each written atomically), then remove it."""
    parts: list[dict[str, object]] = []
    paths: list[Path] = []
    total = tar.stat().st_size
    with tar.open("rb") as src:
        number = 1
        while True:
            path = tar.with_name(f"{tar.name}.{number:03d}")
            tmp = path.with_name(f".{path.name}.tmp")
            digest = hashlib.sha256()
            written = 0
            with tmp.open("wb") as out:
                while written < part_size:
                    chunk = src.read(min(CHUNK, part_size - written))
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if written == 0:
                tmp.unlink()
                break
            os.replace(tmp, path)
            parts.append({"name": path.name, "size": written, "sha256": digest.hexdigest()})
            paths.append(path)
            number += 1
    doc = {"format": PARTS_FORMAT, "archive": tar.name, "size": total, "parts": parts}
    write_atomic(tar.with_name(tar.name + PARTS_SUFFIX), json.dumps(doc, indent=2) + "\n")
    tar.unlink()
    return paths


def find_parts_file(path: Path) -> Path | None:
    """The `.parts` file for a first volume, a `.parts` file itself, or a folder of volumes."""
    if path.name.endswith(PARTS_SUFFIX) and path.is_file():
        return path
    m = _PART.match(path.name)
    if m and path.is_file():
        candidate = path.with_name(m.group("base") + PARTS_SUFFIX)
        if candidate.is_file():
            return candidate
        raise _parts_missing(path, candidate)
    if path.is_dir() and not (path / "oci-layout").exists():
        found = sorted(path.glob(f"*{PARTS_SUFFIX}"))
        if len(found) == 1:
            return found[0]
        volumes = sorted(v for v in path.glob("*.[0-9][0-9][0-9]") if _PART.match(v.name))
        if not found and volumes:
            m = _PART.match(volumes[0].name)
            assert m is not None  # matched just above
            raise _parts_missing(volumes[0], path / (m.group("base") + PARTS_SUFFIX))
    return None


def split_name_hint(path: Path) -> str:
    """For a path that does not exist: when it is the name a split save was given (`save -o
    FILE.tar --split-size`, which writes `FILE.tar.001`, … and `FILE.tar.parts` instead), what
    to give in its place; else ''."""
    parts = path.with_name(path.name + PARTS_SUFFIX)
    if path.exists() or not parts.is_file():
        return ""
    first = path.with_name(f"{path.name}.001")
    if not first.is_file():  # the list alone (its volumes elsewhere): name only what is there
        return f"; it was saved split into volumes: give its volume list {parts}"
    return (
        f"; it was saved split into volumes: give its first volume {first} (or its volume "
        f"list {parts.name})"
    )


def _parts_missing(volume: Path, parts: Path) -> LayoutError:
    """The volume list is what makes volumes one archive: say which file, where, and that it
    travels with the volumes (save writes it beside them)."""
    return LayoutError(
        f"{volume} looks like a volume of a split archive but its volume list {parts.name} is "
        f"not beside it in {parts.parent}; copy {parts.name} (written by save next to the "
        "volumes) into that folder with the volumes"
    )


@dataclass(frozen=True)
class Part:
    path: Path
    start: int
    size: int
    sha256: str


class Volumes:
    """The parts of one archive as a single readable byte range (pread at any offset)."""

    def __init__(self, parts_file: Path) -> None:
        self.label = str(parts_file)
        try:
            doc = json.loads(parts_file.read_text())
            if doc.get("format") != PARTS_FORMAT:
                raise ValueError
            listed = [(str(p["name"]), int(p["size"]), str(p["sha256"])) for p in doc["parts"]]
            self.size = int(doc["size"])
        except (OSError, ValueError, KeyError, TypeError):
            raise LayoutError(f"{parts_file}: not a {PARTS_FORMAT} volume list") from None
        self.parts: list[Part] = []
        start = 0
        missing = []
        for name, size, sha in listed:
            if "/" in name or name in ("", ".", ".."):
                raise LayoutError(f"{parts_file}: bad volume name {name!r}")
            path = parts_file.with_name(name)
            if not path.is_file():
                missing.append(name)
            elif path.stat().st_size != size:  # cut short (or grown) on the way: damaged media
                raise IntegrityError(
                    f"{path}: {path.stat().st_size} bytes, the volume list says {size}; "
                    "copy it again from the source media"
                )
            self.parts.append(Part(path, start, size, sha))
            start += size
        if missing:
            raise LayoutError(
                f"{parts_file}: volumes missing: {', '.join(missing)}; bring every part"
            )
        if start != self.size:
            raise LayoutError(f"{parts_file}: parts add up to {start} bytes, not {self.size}")
        self._fds = [os.open(p.path, os.O_RDONLY) for p in self.parts]

    def pread(self, n: int, offset: int) -> bytes:
        out = bytearray()
        for part, fd in zip(self.parts, self._fds, strict=True):
            if offset >= part.start + part.size or n <= 0:
                continue
            if offset < part.start:
                break
            local = offset - part.start
            data = os.pread(fd, min(n, part.size - local), local)
            out += data
            offset += len(data)
            n -= len(data)
        return bytes(out)

    def extents(self, offset: int, n: int) -> list[Extent]:
        """The (volume, offset, size) runs holding bytes [offset, offset + n) of the archive."""
        out = []
        for part in self.parts:
            if n <= 0 or offset >= part.start + part.size:
                continue
            local = offset - part.start
            take = min(n, part.size - local)
            out.append(Extent(part.path, local, take))
            offset += take
            n -= take
        return out

    def verify(self) -> list[str]:
        """Problems found re-hashing every part against the volume list."""
        problems = []
        for part in self.parts:
            digest = hashlib.sha256()
            with part.path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != part.sha256:
                problems.append(f"{part.path}: checksum does not match the volume list")
        return problems

    def reader(self) -> io.RawIOBase:
        return _VolumeReader(self)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class _VolumeReader(io.RawIOBase):
    """Sequential file view for `tarfile` to scan headers."""

    def __init__(self, volumes: Volumes) -> None:
        self._v = volumes
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._v.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._v.pread(len(buffer), self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
