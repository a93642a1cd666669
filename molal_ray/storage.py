"""Where files live: a local path or a URI (``s3://``, ``gs://``, ...), opened through ``pyarrow.fs``.

Every file the system reads or writes (the prepared pool, annotation parts, manifests, loop state)
goes through a :class:`Location`, resolved once from the string in the config. A local path stays
a local path (made absolute); a URI is resolved by :func:`pyarrow.fs.FileSystem.from_uri`, which
also reads query options such as ``?endpoint_override=host:port&scheme=http``.

Writes are *whole or absent*: on a local disk a file is written under a temporary name and renamed
into place; on an object store a single PUT (or a completed multipart upload) makes an object
appear whole, so the final name is written directly. Nothing here relies on renaming objects.
"""

from __future__ import annotations

import builtins
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from molal_ray.exceptions import ConfigError, StorageError, one_line

TMP_PREFIX = ".tmp-"


def is_uri(path: str) -> bool:
    return "://" in str(path)


@dataclass(frozen=True)
class Location:
    """A folder or file on a filesystem: ``fs`` and the path inside it (no scheme)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def __str__(self) -> str:
        return self.uri

    def join(self, *parts: str) -> Location:
        if self.is_local:
            p = os.path.join(self.path, *parts)
            return Location(self.fs, p, p)
        base, q, query = self.uri.partition("?")  # query options stay at the end of the URI
        return Location(
            self.fs, posixpath.join(self.path, *parts), base.rstrip("/") + "/" + "/".join(parts) + q + query
        )

    @property
    def parent(self) -> Location:
        """The folder that holds this one (the same folder for a bucket's root)."""
        return (
            self.at(posixpath.dirname(self.path.rstrip("/")) or self.path)
            if not self.is_local
            else self.at(os.path.dirname(os.path.abspath(self.path)))
        )

    def at(self, path: str) -> Location:
        """Another path on the same filesystem (a URI of the same scheme and options)."""
        if self.is_local:
            return Location(self.fs, path, path)
        scheme = self.uri.split("://", 1)[0]
        _, q, query = self.uri.partition("?")
        return Location(self.fs, path.rstrip("/"), f"{scheme}://{path.lstrip('/')}{q}{query}")

    def download(self, local_dir: str) -> str:
        """Copy this folder to a local one (returned); a local folder is returned as it is."""
        if self.is_local:
            return self.path
        pafs.copy_files(self.path, local_dir, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return local_dir

    def upload_from(self, local_dir: str) -> None:
        """Copy a local folder's files to this folder."""
        pafs.copy_files(local_dir, self.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    # -- queries -------------------------------------------------------------------------------
    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A folder; on an object store, a prefix with at least one object under it."""
        t = self.info().type
        if t == pafs.FileType.Directory:
            return True
        if t == pafs.FileType.NotFound and not self.is_local:
            return bool(self.list())
        return False

    def list(self, prefix: str = "", suffix: str = "") -> list[pafs.FileInfo]:
        """Files directly in this folder whose names start with ``prefix`` and end with
        ``suffix``, sorted by name (none when the folder does not exist)."""
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        with self._storage("list"):
            infos = self.fs.get_file_info(sel)
        out = [
            i
            for i in infos
            if i.type == pafs.FileType.File and i.base_name.startswith(prefix) and i.base_name.endswith(suffix)
        ]
        return sorted(out, key=lambda i: i.base_name)

    def is_empty(self) -> bool:
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=True)
        return not self.fs.get_file_info(sel)

    # -- writes ---------------------------------------------------------------------------------
    def mkdirs(self) -> None:
        with self._storage("create the folder"):
            self.fs.create_dir(self.path, recursive=True)

    @contextmanager
    def _storage(self, doing: str, temporary: str | None = None) -> Iterator[None]:
        """An error of the storage itself (unreachable, full, refused) as a :class:`StorageError`
        naming the location; a missing file or folder stays ``FileNotFoundError``. A
        ``temporary`` file written in the location's place is named as the location in either
        (the user never gave that name)."""

        def told(exc: BaseException) -> str:
            text = one_line(exc)
            return text.replace(temporary, self.path) if temporary else text

        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError as exc:
            if temporary and temporary in str(exc):
                raise FileNotFoundError(exc.errno, f"could not {doing} {self.uri}: {told(exc)}") from None
            raise
        except OSError as exc:
            raise StorageError(f"storage: could not {doing} {self.uri}: {told(exc)}") from None

    def _tmp_sibling(self) -> str:
        d, n = os.path.split(self.path)
        return os.path.join(d, f"{TMP_PREFIX}{uuid.uuid4().hex}-{n}")

    @contextmanager
    def open_write(self) -> Iterator[Any]:
        """A binary output stream whose file appears whole when the block ends (and not at all
        if it raises)."""
        target = self._tmp_sibling() if self.is_local else self.path
        with self._storage("write", target if target != self.path else None):
            try:
                with self.fs.open_output_stream(target) as f:
                    yield f
            except BaseException:
                if self.is_local and os.path.exists(target):
                    os.remove(target)
                raise
            if self.is_local:
                os.replace(target, self.path)

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file, visible only once complete."""
        with self.open_write() as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, obj: Any) -> None:
        self.write_text(json.dumps(obj, indent=2))

    def write_parquet(self, table: pa.Table, **kwargs: Any) -> None:
        """A Parquet file, visible only once complete (same rule as :meth:`open_write`)."""
        with self.open_write() as f:
            pq.write_table(table, f, **kwargs)

    def read_parquet(self, columns: builtins.list[str] | None = None) -> pa.Table:
        with self.fs.open_input_file(self.path) as f:
            return pq.read_table(f, columns=columns)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        """The file as UTF-8 text; a byte-order mark (spreadsheets write one) is not part of it."""
        return self.read_bytes().decode("utf-8-sig")

    def read_json(self) -> Any:
        return json.loads(self.read_text())

    def delete_file(self, missing_ok: bool = True) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def delete_dir(self) -> None:
        """Remove the folder and everything under it (nothing if absent)."""
        if self.info().type == pafs.FileType.NotFound and self.is_local:
            return
        try:
            self.fs.delete_dir(self.path)
        except FileNotFoundError:
            pass

    def delete_stale_temporaries(self) -> int:
        """Remove ``.tmp-*`` files left in this folder by a writer that died (local disks only:
        object stores never hold partial objects)."""
        stale = self.list(prefix=TMP_PREFIX)
        for i in stale:
            self.fs.delete_file(i.path)
        return len(stale)


def resolve(path: str | os.PathLike[str] | Location, *, field: str = "path") -> Location:
    """A :class:`Location` for a local path or a URI; ``field`` names the config field in errors."""
    if isinstance(path, Location):
        return path
    s = os.fspath(path)
    if not s:
        raise ConfigError(f"{field}: got an empty path; expected a local path or a URI")
    if not is_uri(s):
        p = os.path.abspath(os.path.expanduser(s))
        return Location(pafs.LocalFileSystem(), p, p)
    try:
        fs, inner = pafs.FileSystem.from_uri(s)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{field}: got {s!r}; expected a local path or a URI pyarrow can open "
            f"(s3://, gs://, hdfs://, file://): {exc}"
        ) from None
    if isinstance(fs, pafs.LocalFileSystem):  # file:///abs/path
        return Location(fs, inner, inner)
    return Location(fs, inner.rstrip("/"), s)


def write_problem(path: str, folder: bool) -> str | None:
    """Why a local ``path`` cannot be written as a file (``folder`` False) or made a folder (True),
    in a few words, or None when it can (its missing folders would be made). URIs: None (their
    writers find out)."""
    if is_uri(path):
        return None
    target = os.path.abspath(path)
    if folder and os.path.isfile(target):
        return f"{path} is a file; expected a folder (or a path where one can be made)"
    if not folder and os.path.isdir(target):
        return f"{path} is a folder; expected the path of a file to write"
    existing = target if folder and os.path.isdir(target) else os.path.dirname(target)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{path} cannot be written: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{path} cannot be written: no permission to write in {existing}"
    return None
