"""The artifact store: ``file:///path`` or ``s3://bucket/prefix``, with manifests committed last.

A stage's outputs live under ``stages/<stage>/<cache-key>/``. The stage is done when its
``manifest.json`` exists: it lists every file with size and sha256, the spec slice, the input
digests, the code version and timings, and it is written after every file. A stage that died
mid-write has no manifest and runs again. Files are checked against the manifest's sha256 when a
stage is found done and when read, so a corrupted artifact is found, never silently used (on S3
the ETag recorded at commit stands in for the sha256 while it is unchanged; any other object is
downloaded and hashed).

S3 endpoint, region and credentials come from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ...); boto3's transfer manager
uploads large files (models) in parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tratree.errors import UserError
from tratree.store.atomic import atomic_write

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class StoreError(UserError, RuntimeError):
    """The store cannot be reached, or an artifact in it is missing or corrupted."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_files(files: dict[str, dict[str, Any]]) -> str:
    """One digest for a set of files: the sha256 of their sorted (name, sha256) list."""
    return hashlib.sha256(json.dumps(sorted((k, v["sha256"]) for k, v in files.items())).encode()).hexdigest()


def scan_dir(root: str | Path) -> dict[str, dict[str, Any]]:
    """name (relative, '/'-separated) -> {size, sha256} of every file under ``root``."""
    root = Path(root)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        # hidden names are temp files of writes in progress; a manifest is never its own content
        if path.is_file() and not any(p.startswith(".") for p in rel.parts) and rel.as_posix() != MANIFEST:
            out[rel.as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def _well_formed(manifest: Any) -> bool:
    """Whether a manifest has what reading and verifying a stage needs; anything else counts as not
    done (the stage runs again) rather than stopping every later run."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("digest"), str):
        return False
    files = manifest.get("files")
    return isinstance(files, dict) and all(
        isinstance(info, dict) and isinstance(info.get("sha256"), str) and isinstance(info.get("size"), int)
        for info in files.values())


class Store(ABC):
    """Where artifacts live. Keys are '/'-separated paths below the store's root."""

    uri: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def upload(self, local: Path, key: str) -> None: ...

    @abstractmethod
    def download(self, key: str, local: Path) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    # Leases (see tratree.store.lease): small objects changed only by compare-and-swap. A token names the
    # version read; a create or swap that finds another version returns None.
    @abstractmethod
    def create_new(self, key: str, data: bytes) -> str | None:
        """Write ``key`` only if it does not exist; its token, or None when it exists."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The bytes of ``key`` and their token; None when it does not exist."""

    @abstractmethod
    def swap(self, key: str, data: bytes, token: str) -> str | None:
        """Replace ``key`` only if it still has ``token``; the new token, or None when it changed or went."""

    def local_path(self, key: str) -> Path | None:
        """Where the object can be read in place (local stores), else None."""
        return None

    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    # --- stage outputs ---------------------------------------------------------------

    def read_manifest(self, prefix: str) -> dict[str, Any] | None:
        """The manifest under ``prefix``, or None when the stage is not done."""
        data = self.read_bytes(f"{prefix}/{MANIFEST}")
        if data is None:
            return None
        try:
            manifest = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn manifest means not done
        return manifest if _well_formed(manifest) else None  # so is one edited or damaged by hand

    def commit(self, local_dir: Path, prefix: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Upload every file of ``local_dir`` under ``prefix``, then the manifest; returns the manifest."""
        files = scan_dir(local_dir)
        for name in files:
            self.upload(local_dir / name, f"{prefix}/{name}")
            files[name].update(self.stamp(f"{prefix}/{name}"))
        manifest = {"format": MANIFEST_FORMAT, **meta, "files": files, "digest": digest_files(files)}
        self.write_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True).encode())
        return manifest

    def stamp(self, key: str) -> dict[str, Any]:
        """What the store itself says of an object just written, kept in the manifest to verify it cheaply."""
        return {}

    def verify(self, prefix: str, manifest: dict[str, Any]) -> None:
        """Check every file against its size and sha256 in the manifest; StoreError naming the first that differs."""
        for name, info in manifest["files"].items():
            if not self.matches(f"{prefix}/{name}", info):
                raise StoreError(f"{self.url(prefix + '/' + name)}: does not match its manifest")

    def matches(self, key: str, info: dict[str, Any]) -> bool:
        """Whether the object has the manifest's size and sha256."""
        local = self.local_path(key)
        assert local is not None, "stores that cannot read in place override matches()"
        return local.is_file() and local.stat().st_size == info["size"] and sha256_file(local) == info["sha256"]

    def read_verified(self, prefix: str, manifest: dict[str, Any], name: str) -> bytes:
        """A stage file's bytes, checked against the manifest's sha256; StoreError when they differ."""
        info = manifest["files"].get(name)
        data = self.read_bytes(f"{prefix}/{name}")
        if info is None or data is None or hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise StoreError(f"{self.url(prefix + '/' + name)}: missing, or does not match its manifest")
        return data

    def fetch(self, prefix: str, manifest: dict[str, Any], into: Path) -> Path:
        """A local directory holding the stage's files, checked against their sha256."""
        local_root = self.local_path(prefix)
        if local_root is not None:
            self.verify(prefix, manifest)
            return local_root
        into.mkdir(parents=True, exist_ok=True)
        for name, info in manifest["files"].items():
            target = into / name
            if not (target.is_file() and sha256_file(target) == info["sha256"]):
                target.parent.mkdir(parents=True, exist_ok=True)
                self.download(f"{prefix}/{name}", target)
                if sha256_file(target) != info["sha256"]:
                    target.unlink()
                    raise StoreError(f"{self.url(prefix + '/' + name)}: sha256 does not match its manifest")
        return into

    def invalidate(self, prefix: str) -> None:
        """Forget a stage's outputs: its manifest goes first, so it is not done from then on."""
        self.delete(f"{prefix}/{MANIFEST}")


class LocalStore(Store):
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = Path(uri.removeprefix("file://")).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root / key

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        with atomic_write(self._path(key), "wb") as fh:
            fh.write(data)

    def upload(self, local: Path, key: str) -> None:
        target = self._path(key)
        if target.resolve() == local.resolve():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)

    def download(self, key: str, local: Path) -> None:
        shutil.copyfile(self._path(key), local)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    @staticmethod
    def _token(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def create_new(self, key: str, data: bytes) -> str | None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(path):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        return self._token(data)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        data = self.read_bytes(key)
        return None if data is None else (data, self._token(data))

    def swap(self, key: str, data: bytes, token: str) -> str | None:
        path = self._path(key)
        with self._locked(path):
            current = self.read_bytes(key)
            if current is None or self._token(current) != token:
                return None
            self.write_bytes(key, data)
        return self._token(data)

    @staticmethod
    @contextlib.contextmanager
    def _locked(path: Path) -> Iterator[None]:
        """An exclusive lock beside ``path`` (flock: this host, and NFS with locking) around a swap."""
        import fcntl

        with open(path.with_name(path.name + ".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class S3Store(Store):
    def __init__(self, uri: str, client: Any = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        self.uri = uri
        rest = uri.removeprefix("s3://")
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3")
        # parts of 64 MiB, several at once: a 7B model's shards upload in parallel pieces
        self.transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=8)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise StoreError(f"{self.uri}: {what}: {code or err}") from None
        except BotoCoreError as err:
            raise StoreError(f"{self.uri}: {what}: {err}") from None

    def read_bytes(self, key: str) -> bytes | None:
        resp = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return None if resp is None else resp["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call(f"put {key}", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload(self, local: Path, key: str) -> None:
        self._call(f"upload {key}", self.client.upload_file, str(local), self.bucket, self._key(key),
                   Config=self.transfer)

    def download(self, key: str, local: Path) -> None:
        self._call(f"download {key}", self.client.download_file, self.bucket, self._key(key), str(local),
                   Config=self.transfer)

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"):
                return None
            raise StoreError(f"{self.uri}: put {key}: {code or err}") from None
        return resp["ETag"]

    def create_new(self, key: str, data: bytes) -> str | None:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        resp = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return None if resp is None else (resp["Body"].read(), resp["ETag"])

    def swap(self, key: str, data: bytes, token: str) -> str | None:
        return self._conditional_put(key, data, IfMatch=token)

    def _head(self, key: str) -> dict[str, Any] | None:
        return self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=self._key(key))

    def stamp(self, key: str) -> dict[str, Any]:
        head = self._head(key)
        return {"etag": head["ETag"]} if head and head.get("ETag") else {}

    def matches(self, key: str, info: dict[str, Any]) -> bool:
        """Size, then S3's own content digest (ETag) as recorded at commit; when the ETag differs or was
        not recorded (the object was rewritten, or copied between buckets), the object is downloaded
        and its sha256 compared, so a same-size corruption is always found."""
        head = self._head(key)
        if head is None or int(head["ContentLength"]) != info["size"]:
            return False
        if info.get("etag") and head.get("ETag") == info["etag"]:
            return True
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "object"
            self.download(key, local)
            return sha256_file(local) == info["sha256"]


def open_store(uri: str) -> Store:
    """The store of a ``file://`` or ``s3://`` URI."""
    if uri.startswith("file://"):
        return LocalStore(uri)
    if uri.startswith("s3://"):
        return S3Store(uri)
    raise StoreError(f"{uri}: a store is a file:// or s3:// URI")


def list_prefix(uri: str) -> dict[str, dict[str, Any]]:
    """Every object under an s3:// prefix (a model someone uploaded): relative name -> size and ETag."""
    store = S3Store(uri)
    paginator = store.client.get_paginator("list_objects_v2")
    out: dict[str, dict[str, Any]] = {}
    pages = store._call(f"list {uri}", lambda: list(paginator.paginate(Bucket=store.bucket,
                                                                       Prefix=store.prefix.rstrip("/") + "/")))
    for page in pages:
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(store.prefix) :].lstrip("/")
            out[rel] = {"size": int(obj["Size"]), "etag": obj.get("ETag", "")}
    if not out:
        raise StoreError(f"{uri}: no objects under this prefix")
    return out


def download_prefix(uri: str, target: Path, names: list[str] | None = None) -> None:
    """Download the objects under an s3:// prefix (``names``, default all) into ``target``."""
    store = S3Store(uri)
    for rel in names if names is not None else list(list_prefix(uri)):
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        store.download(rel, dest)
