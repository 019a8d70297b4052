"""One storage layer for local paths and ``s3://`` URIs, over ``pyarrow.fs``.

Every stage reads and writes through :class:`Storage`. Writes are atomic: a local file is
written under a temporary name in the same folder and renamed; an S3 object becomes visible
only when its (multipart) upload completes. Stage completion is recorded by
:meth:`Storage.mark_done` so that reruns skip finished work.

Credentials are never read here explicitly: S3 uses the standard AWS chain (environment,
config files, instance role); ``StorageConfig`` only adds endpoint, region and scheme.

A :class:`Storage` pickles as its root URI and config only (the ``pyarrow`` filesystem is
re-opened on unpickling), so it can be handed to Ray tasks, actors, Train workers and Tune
trials as it is; the S3 credentials are then read from the worker's own environment.
"""

from __future__ import annotations

from mosaic_ray.errors import MosaicError
import contextlib
import io
import json
import os
import posixpath
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mosaic_ray.config import StorageConfig

#: where :meth:`Storage.local_copy` puts downloads of remote (``s3://``) files
LOCAL_CACHE_DIR = os.path.join(tempfile.gettempdir(), "mosaic_ray_cache")

class StorageError(MosaicError, RuntimeError):
    """A storage operation failed; the message names the URI (never credentials)."""


#: what an AWS / S3 error code or message means for the user (first match wins)
_HINTS = (
    (("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist"),
     "the bucket does not exist: create it or fix output_dir"),
    (("INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch",
      "InvalidToken", "ExpiredToken", "EXPIRED_TOKEN"),
     "the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile"),
    (("ACCESS_DENIED", "AccessDenied", "Access Denied", "403"),
     "access denied: check the credentials and the bucket's policy"),
    (("No credentials", "Unable to locate credentials", "MISSING_AUTHENTICATION_TOKEN",
      "credentials provider"),
     "no AWS credentials found: set them in the environment, a profile or an instance role"),
    (("NETWORK_CONNECTION", "Could not connect", "curlCode: 6", "curlCode: 7", "curlCode: 28"),
     "cannot reach the storage endpoint: check storage.endpoint_url / the network"),
)


def _one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's text on one line (pyarrow's AWS messages span several)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def storage_error(action: str, uri: str, e: BaseException) -> StorageError:
    """A one-line :class:`StorageError` for a failed ``action`` on ``uri`` (``"cannot read
    s3://b/x: the bucket does not exist: create it or fix output_dir (AWS Error ...)"``)."""
    detail = _one_line(e)
    for needles, hint in _HINTS:
        if any(n in detail for n in needles):
            return StorageError(f"cannot {action} {uri}: {hint} ({detail})")
    return StorageError(f"cannot {action} {uri}: {detail}")


@contextlib.contextmanager
def _wrapped(action: str, uri: str):
    """Turn OSError / Arrow errors inside the block into :func:`storage_error`."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise storage_error(action, uri, e) from e


def _split_uri(uri: str) -> tuple[str, str]:
    if uri.startswith("s3://"):
        return "s3", uri[len("s3://"):]
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
    return "local", os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def _endpoint_and_region(cfg: StorageConfig | None) -> tuple[str | None, str | None]:
    """The S3 endpoint as ``scheme://host[:port]`` (config, else ``$AWS_ENDPOINT_URL_S3`` /
    ``$AWS_ENDPOINT_URL``; scheme ``storage.scheme``, or https, where it names none) and the
    region (config, else ``$AWS_REGION`` / ``$AWS_DEFAULT_REGION``); None where unset."""
    cfg = cfg or StorageConfig()
    endpoint = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "://" not in endpoint:
        endpoint = f"{cfg.scheme or 'https'}://{endpoint}"
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return endpoint or None, region or None


def make_filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """The ``pyarrow`` filesystem and in-filesystem path for ``uri``.

    Raises:
        StorageError: unsupported scheme.
    """
    kind, path = _split_uri(uri)
    if kind == "local":
        return pafs.LocalFileSystem(), path
    endpoint, region = _endpoint_and_region(cfg)
    kwargs: dict[str, Any] = {}
    if endpoint:
        kwargs["scheme"], kwargs["endpoint_override"] = endpoint.split("://", 1)
    if region:
        kwargs["region"] = region
    with _wrapped("open", uri):
        return pafs.S3FileSystem(**kwargs), path.rstrip("/")


def _boto3_s3(cfg: StorageConfig | None = None):
    """A boto3 S3 client with the endpoint and region :func:`make_filesystem` uses (for the
    conditional requests pyarrow does not offer); credentials from the standard AWS chain."""
    import boto3

    endpoint, region = _endpoint_and_region(cfg)
    return boto3.client("s3", endpoint_url=endpoint, region_name=region)


def _write_temp(dest: str, data: bytes) -> str:
    """Write ``data`` durably (fsync) to a new hidden temporary file beside the local path
    ``dest`` (``.tmp-*``: left out of listings) and return its path."""
    tmp = posixpath.join(posixpath.dirname(dest), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(dest)}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


@dataclass
class Storage:
    """A storage root (local folder or ``s3://bucket/prefix``) with atomic I/O helpers.

    Paths given to methods are relative to the root and use ``/``. Picklable: the state is
    ``root_uri`` and ``config``; the filesystem is opened again where it is unpickled.

    Raises:
        StorageError: unsupported URI scheme (at construction).
    """

    root_uri: str
    config: StorageConfig | None = None

    def __post_init__(self) -> None:
        self.fs, self.root = make_filesystem(self.root_uri, self.config)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __getstate__(self) -> dict[str, Any]:
        # the pyarrow filesystem is not sent along: it may hold credentials, and an
        # S3FileSystem is re-created cheaply from the config on the receiving side
        return {"root_uri": self.root_uri, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root_uri, self.config = state["root_uri"], state["config"]
        self.__post_init__()

    def __repr__(self) -> str:  # never print the filesystem object (it may hold keys)
        return f"Storage({self.root_uri!r})"

    # ------------------------------------------------------------------ paths
    def path(self, rel: str = "") -> str:
        """Filesystem path (no scheme) of ``rel`` under the root."""
        return posixpath.join(self.root, rel) if rel else self.root

    def uri(self, rel: str = "") -> str:
        """Full URI of ``rel`` (``s3://…`` or an absolute local path)."""
        p = self.path(rel)
        return p if self.is_local else f"s3://{p}"

    def child(self, rel: str) -> "Storage":
        return Storage(self.uri(rel), self.config)

    # ------------------------------------------------------------------ queries
    def exists(self, rel: str) -> bool:
        with _wrapped("check", self.uri(rel)):
            return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def list(self, rel: str = "", suffix: str = "", recursive: bool = False) -> list[str]:
        """Sorted relative paths of files under ``rel`` ending in ``suffix``."""
        base = self.path(rel)
        with _wrapped("list", self.uri(rel)):
            if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
                return []
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
        out = []
        for info in infos:
            if info.type != pafs.FileType.File or not info.path.endswith(suffix):
                continue
            name = posixpath.basename(info.path)
            if name.startswith(".tmp-") or name.startswith("_"):
                continue
            out.append(posixpath.relpath(info.path, self.root))
        return sorted(out)

    def sizes(self, rel: str) -> dict[str, int]:
        """{relative path: size in bytes} of the file ``rel`` or of every file below the folder
        ``rel`` (names starting with ``_`` or ``.tmp-`` left out, as in :meth:`list`); empty
        when ``rel`` does not exist."""
        base = self.path(rel)
        with _wrapped("list", self.uri(rel)):
            info = self.fs.get_file_info(base)
            if info.type == pafs.FileType.File:
                return {rel: int(info.size)}
            if info.type == pafs.FileType.NotFound:
                return {}
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        out = {}
        for i in infos:
            name = posixpath.basename(i.path)
            if i.type == pafs.FileType.File and not name.startswith((".tmp-", "_")):
                out[posixpath.relpath(i.path, self.root)] = int(i.size)
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ writes
    def makedirs(self, rel: str) -> None:
        with _wrapped("create", self.uri(rel)):
            self.fs.create_dir(self.path(rel), recursive=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomically write ``data`` to ``rel``."""
        dest = self.path(rel)
        parent = posixpath.dirname(dest)
        try:
            if self.is_local:
                os.makedirs(parent, exist_ok=True)
                tmp = _write_temp(dest, data)
                os.replace(tmp, dest)
            else:  # an S3 object appears only once its upload completes
                with self.fs.open_output_stream(dest) as f:
                    f.write(data)
        except OSError as e:
            raise storage_error("write", self.uri(rel), e) from e

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``data`` to ``rel`` only if nothing is there yet, atomically: of several
        concurrent callers exactly one gets True, and no reader ever sees a partial file.

        Local: the data goes to a temporary file that is hard-linked to ``rel`` (``link`` fails
        if ``rel`` exists; where the filesystem has no hard links, ``O_CREAT | O_EXCL``). S3: a
        conditional ``PutObject`` (``If-None-Match: *``) through boto3, with the endpoint and
        region of :func:`make_filesystem`.

        Returns:
            True if this call created ``rel``, False if it already existed.

        Raises:
            StorageError: any other failure (the message names the URI).
        """
        dest = self.path(rel)
        if not self.is_local:
            bucket, _, key = dest.partition("/")
            try:
                _boto3_s3(self.config).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except Exception as e:  # botocore ClientError: 412 when the object exists
                code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    return False
                raise storage_error("create", self.uri(rel), e) from e
        parent = posixpath.dirname(dest)
        try:
            os.makedirs(parent, exist_ok=True)
            tmp = _write_temp(dest, data)
            try:
                os.link(tmp, dest)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links here: exclusive create (a reader may see it empty)
                try:
                    fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return True
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        except OSError as e:
            raise storage_error("create", self.uri(rel), e) from e

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except (OSError, FileNotFoundError) as e:
            raise storage_error("read", self.uri(rel), e) from e

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode())

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except ValueError as e:  # a truncated or foreign file: name it
            raise StorageError(f"cannot read {self.uri(rel)}: not valid JSON ({_one_line(e)})") from e

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Atomically write ``table`` as one Parquet file (zstd)."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(rel, buf.getvalue())

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """Read one Parquet file, or every ``*.parquet`` under a folder, as one table.

        Raises:
            StorageError: missing path or unreadable Parquet (the message names the file).
        """
        with _wrapped("read", self.uri(rel)):
            info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{self.uri(rel)} does not exist")
        files = [rel] if info.type == pafs.FileType.File else self.list(rel, ".parquet", recursive=True)
        tables = []
        for f in files:
            try:
                tables.append(pq.read_table(self.path(f), filesystem=self.fs, columns=columns))
            except (OSError, pa.ArrowInvalid) as e:
                raise storage_error("read Parquet", self.uri(f), e) from e
        if not tables:
            raise StorageError(f"no Parquet files under {self.uri(rel)}")
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

    def local_copy(self, rel: str) -> str:
        """A local file path holding ``rel``: the file itself for a local root; for ``s3://`` a
        download into :data:`LOCAL_CACHE_DIR` (named by a hash of the URI plus the base name,
        written to a temporary name and renamed, so concurrent callers never see a partial
        file; downloaded again on every call, so a rewritten object is never served stale).

        Raises:
            StorageError: ``rel`` cannot be read.
        """
        if self.is_local:
            return self.path(rel)
        with _wrapped("create", LOCAL_CACHE_DIR):
            os.makedirs(LOCAL_CACHE_DIR, exist_ok=True)
        dest = os.path.join(LOCAL_CACHE_DIR,
                            f"{uuid.uuid5(uuid.NAMESPACE_URL, self.uri(rel)).hex}-{posixpath.basename(rel)}")
        data = self.read_bytes(rel)
        tmp = dest + f".{uuid.uuid4().hex}"
        with _wrapped(f"copy {self.uri(rel)} to", dest):
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        return dest

    def delete(self, rel: str) -> None:
        p = self.path(rel)
        with _wrapped("delete", self.uri(rel)):
            info = self.fs.get_file_info(p)
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(p)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(p)

    # ------------------------------------------------------------------ completion
    def mark_done(self, stage: str, payload: dict[str, Any] | None = None) -> None:
        """Record that ``stage`` finished (``<stage>/_SUCCESS.json``)."""
        self.write_json(f"{stage}/_SUCCESS.json", payload or {})

    def is_done(self, stage: str) -> bool:
        return self.exists(f"{stage}/_SUCCESS.json")

    def done_payload(self, stage: str) -> dict[str, Any]:
        return self.read_json(f"{stage}/_SUCCESS.json")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_shards(storage: Storage, rel_dir: str, table: pa.Table, shard_size: int,
                 prefix: str = "shard") -> list[str]:
    """Split ``table`` into Parquet shards of ``shard_size`` rows under ``rel_dir``."""
    names = []
    n = table.num_rows
    for i, start in enumerate(range(0, max(n, 1), shard_size)):
        part = table.slice(start, shard_size)
        name = f"{rel_dir}/{prefix}-{i:05d}.parquet"
        storage.write_table(name, part)
        names.append(name)
    return names


def iter_tables(storage: Storage, rels: Iterable[str], columns: list[str] | None = None):
    for r in rels:
        yield r, storage.read_table(r, columns=columns)
