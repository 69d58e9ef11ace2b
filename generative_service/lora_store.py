"""Where LoRA adapter files live: a local directory (default) or the object store.

One interface, keyed by adapter name, every version identified by its content hash:

- the gateway `put`s uploads (never over an adapter that exists), `delete`s, `list`s and `head`s;
- a GPU worker calls `fetch(name)` once per batch: it answers the local file of the adapter's
  CURRENT version. With a bucket (`GENSVC_STORAGE_URL`) that is a HEAD request for the version's
  sha256, then a file in the worker's cache named by that hash, downloaded on first use. A
  replaced adapter has a new hash (a new file, so the engine reloads it); a deleted one is
  NotFound at once: no worker serves a stale adapter.

Bucket layout: PREFIX/loras/NAME.safetensors with the sha256 in the object's metadata.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import generative_service.engine.paths as paths
from generative_service.errors import Conflict, NotFound
from generative_service.settings import Settings

SUFFIX = ".safetensors"
SHA256_META = "sha256"
_SEEDED_KEY = "loras/.seeded-from"


@dataclass(frozen=True)
class StoredLora:
    name: str
    size_bytes: int
    sha256: str | None = None  # None: an object written by another tool, without the metadata


class LoraStore(Protocol):
    def names(self) -> list[str]: ...
    def list(self) -> list[StoredLora]: ...
    def head(self, name: str) -> StoredLora | None: ...
    def staging_dir(self) -> Path: ...
    def put(self, name: str, path: Path, *, sha256: str) -> StoredLora: ...
    def delete(self, name: str) -> None: ...
    def fetch(self, name: str) -> Path: ...


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class LocalLoraStore:
    """NAME.safetensors files in GENSVC_LORA_DIR (default CACHE_DIR/loras, seeded with samples)."""

    def __init__(self, settings: Settings) -> None:
        from generative_service.engine.hashing import FileHasher

        self.settings = settings
        self.hasher = FileHasher(Path(settings.cache_dir) / "file-hashes.json")

    def names(self) -> list[str]:
        return paths.list_lora_names(self.settings)

    def list(self) -> list[StoredLora]:
        return [item for name in self.names() if (item := self.head(name)) is not None]

    def head(self, name: str) -> StoredLora | None:
        path = paths.lora_path(self.settings, name)
        try:
            return StoredLora(
                name=name, size_bytes=path.stat().st_size, sha256=self.hasher.sha256(path)
            )
        except FileNotFoundError:
            return None

    def staging_dir(self) -> Path:
        paths.seed_lora_dir(self.settings)  # first, so a later seeding never collides with this
        directory = paths.resolve_lora_dir(self.settings)
        directory.mkdir(parents=True, exist_ok=True)
        return directory  # same filesystem as the adapters: `put` hard-links

    def put(self, name: str, path: Path, *, sha256: str) -> StoredLora:
        target = paths.lora_path(self.settings, name)
        try:
            os.link(path, target)  # fails instead of overwriting an adapter that exists
        except FileExistsError:
            raise Conflict(f"LoRA {name!r} already exists; delete it first") from None
        return StoredLora(name=name, size_bytes=target.stat().st_size, sha256=sha256)

    def delete(self, name: str) -> None:
        try:
            paths.lora_path(self.settings, name).unlink()
        except FileNotFoundError:
            raise NotFound(f"LoRA {name!r} not found") from None

    def fetch(self, name: str) -> Path:
        path = paths.lora_path(self.settings, name)
        if not path.is_file():
            raise NotFound(f"LoRA {name!r} not found")
        return path


class ObjectLoraStore:
    """Adapters as objects of the bucket; workers cache them locally by content hash."""

    def __init__(self, settings: Settings) -> None:
        from generative_service.object_store import ObjectStore

        self.settings = settings
        self.objects = ObjectStore(settings)
        self.cache_dir = Path(settings.lora_cache_dir or Path(settings.cache_dir) / "lora-objects")
        self.cache_limit = max(16, 4 * settings.lora_cache_size)
        self._seeded = False

    @staticmethod
    def _key(name: str) -> str:
        return f"loras/{name}{SUFFIX}"

    def names(self) -> list[str]:
        return [item.name for item in self.list()]

    def list(self) -> list[StoredLora]:
        self._seed()
        return sorted(
            (
                StoredLora(name=item.key[len("loras/") : -len(SUFFIX)], size_bytes=item.size)
                for item in self.objects.list("loras/")
                if item.key.endswith(SUFFIX) and "/" not in item.key[len("loras/") :]
            ),
            key=lambda item: item.name,
        )

    def head(self, name: str) -> StoredLora | None:
        self._seed()
        try:
            info = self.objects.head(self._key(name))
        except NotFound:
            return None
        return StoredLora(name=name, size_bytes=info.size, sha256=info.metadata.get(SHA256_META))

    def staging_dir(self) -> Path:
        return Path(tempfile.gettempdir())

    def put(self, name: str, path: Path, *, sha256: str) -> StoredLora:
        # NOTE: two uploads of one new name at the same moment both pass the gateway's early
        # check; the create-only write lets exactly one of them in.
        with open(path, "rb") as handle:
            try:
                self.objects.put(
                    self._key(name),
                    handle,
                    content_type="application/octet-stream",
                    metadata={SHA256_META: sha256},
                    if_absent=True,
                )
            except Conflict:
                raise Conflict(f"LoRA {name!r} already exists; delete it first") from None
        return StoredLora(name=name, size_bytes=path.stat().st_size, sha256=sha256)

    def delete(self, name: str) -> None:
        if self.head(name) is None:
            raise NotFound(f"LoRA {name!r} not found")
        self.objects.delete(self._key(name))

    def fetch(self, name: str) -> Path:
        """The local file of the adapter's current version, downloaded on first use."""
        info = self.objects.head(self._key(name))  # NotFound when deleted
        version = info.metadata.get(SHA256_META) or _listing_version(info)
        path = self.cache_dir / f"{version}{SUFFIX}"
        if path.is_file():
            os.utime(path)  # recently used: kept by `_prune`
            return path
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.cache_dir, prefix=".fetch-", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                self.objects.download(self._key(name), handle)
            if SHA256_META in info.metadata and sha256_file(tmp) != version:
                # Replaced between our HEAD and the download: take whatever is current now.
                tmp.unlink()
                return self.fetch(name)
            tmp.replace(path)  # atomic: a reader never sees half a file
        finally:
            tmp.unlink(missing_ok=True)
        self._prune(keep=path)
        return path

    def _prune(self, *, keep: Path) -> None:
        files = sorted(self.cache_dir.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.cache_limit)]:
            if old != keep:
                old.unlink(missing_ok=True)

    def _seed(self) -> None:
        """Put the model bundle's sample adapters in the bucket once (unless GENSVC_LORA_DIR is set)."""
        if self._seeded or self.settings.lora_dir is not None:
            return
        self._seeded = True
        root = paths.model_root(self.settings)
        if root is None or not (root / "loras").is_dir():
            return
        try:
            seeded = set(self.objects.get(_SEEDED_KEY)[0].decode().split("\n"))
        except NotFound:
            seeded = set()
        if str(root.resolve()) in seeded:
            return
        present = {item.key for item in self.objects.list("loras/")}
        for source in sorted((root / "loras").glob(f"*{SUFFIX}")):
            key = self._key(source.stem)
            if key not in present:
                with open(source, "rb") as handle:
                    self.objects.put(key, handle, metadata={SHA256_META: sha256_file(source)})
        seeded.add(str(root.resolve()))
        self.objects.put(_SEEDED_KEY, "\n".join(sorted(seeded)).encode(), content_type="text/plain")


def with_hashes(store: LoraStore, items: list[StoredLora]) -> list[StoredLora]:
    """`items` with every missing sha256 read from the store: a bucket listing carries no object
    metadata, so those are one HEAD each (a few at a time)."""
    missing = [item.name for item in items if item.sha256 is None]
    if not missing:
        return items
    with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
        heads = dict(zip(missing, pool.map(store.head, missing), strict=True))
    return [
        item if item.sha256 is not None else (heads[item.name] or item)  # None: deleted meanwhile
        for item in items
    ]


def _listing_version(info) -> str:
    # An object written by another tool has no sha256 metadata; its size and time still change.
    return (
        "listed-" + hashlib.sha256(f"{info.key}:{info.size}:{info.modified}".encode()).hexdigest()
    )


_stores: dict[tuple, LoraStore] = {}


def get_lora_store(settings: Settings) -> LoraStore:
    """The LoRA store `settings` name (one per configuration and process: clients are reused)."""
    if not settings.storage_url:
        return LocalLoraStore(settings)
    key = (
        settings.storage_url,
        settings.s3_endpoint_url,
        str(settings.lora_cache_dir),
        str(settings.cache_dir),
        str(settings.lora_dir),
        settings.model,
    )
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = ObjectLoraStore(settings)
    return store
