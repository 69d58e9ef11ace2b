"""Image storage backends: a local directory (default) or an S3-compatible bucket.

Local layout: STORAGE_DIR/{job_id}/{index}.{ext}, a directory gateway and workers must share.
Bucket layout (`GENSVC_STORAGE_URL=s3://BUCKET/PREFIX`): PREFIX/images/{job_id}/{index}, the
content type kept on the object; gateway and workers then share nothing but the bucket.
Writes are idempotent per job and index (a retried job overwrites, never duplicates) and atomic
(a temp file renamed; an S3 object appears whole), so a reader never sees half an image.
Retention: `purge_older_than(GENSVC_RETENTION_S)`, run by the GPU workers' maintenance.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from generative_service.errors import NotFound

if TYPE_CHECKING:
    from PIL.Image import Image

    from generative_service.object_store import ObjectStore
    from generative_service.settings import Settings

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {value: key for key, value in CONTENT_TYPES.items()}


class _CheckedBuffer(io.BytesIO):
    """An output buffer that calls `check` before each write. PIL writes a PNG or JPEG block by
    block as it encodes it, so a check that raises (a cancel) stops a long encode between blocks;
    a 2048 px PNG took ~10 s on a loaded CPU in one piece."""

    def __init__(self, check: Callable[[], None]) -> None:
        super().__init__()
        self.check = check

    def write(self, data) -> int:
        self.check()
        return super().write(data)


def encode_image(
    image: Image, fmt: str, *, check: Callable[[], None] | None = None
) -> tuple[bytes, str]:
    """Encode a PIL image as png/jpeg/webp; returns (bytes, content type).

    `check` is called between encoded blocks (PNG, JPEG; WebP encodes in one call) and may
    raise to stop the encode.
    """
    buffer = io.BytesIO() if check is None else _CheckedBuffer(check)
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=92)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=92)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue(), CONTENT_TYPES[fmt]


def image_url(job_id: str, index: int) -> str:
    return f"/v1/jobs/{job_id}/images/{index}"


class Storage(Protocol):
    def put(self, job_id: str, index: int, data: bytes, content_type: str) -> None: ...
    def get(self, job_id: str, index: int) -> tuple[bytes, str]: ...
    def stream(self, job_id: str, index: int) -> tuple[Iterator[bytes], str, int]: ...
    def presigned_url(self, job_id: str, index: int, expires_s: int) -> str | None: ...
    def delete_job(self, job_id: str) -> None: ...
    def purge_older_than(self, age_s: float) -> int: ...


def check_job_id(job_id: str) -> str:
    # NOTE: job ids come from URLs; refuse anything that could leave the storage root.
    if not job_id.startswith("job_") or not job_id[4:].isalnum():
        raise NotFound(f"job {job_id!r} not found")
    return job_id


class LocalStorage:
    """Images as files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _job_dir(self, job_id: str) -> Path:
        return self.root / check_job_id(job_id)

    def put(self, job_id: str, index: int, data: bytes, content_type: str) -> None:
        directory = self._job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(f"{index}.*"):
            stale.unlink(missing_ok=True)
        target = directory / f"{index}.{EXTENSIONS[content_type]}"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{index}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)

    def get(self, job_id: str, index: int) -> tuple[bytes, str]:
        if index < 0:
            raise NotFound(f"image {index} of job {job_id} not found")
        for path in self._job_dir(job_id).glob(f"{index}.*"):
            if path.suffix[1:] in CONTENT_TYPES:
                return path.read_bytes(), CONTENT_TYPES[path.suffix[1:]]
        raise NotFound(f"image {index} of job {job_id} not found")

    def stream(self, job_id: str, index: int) -> tuple[Iterator[bytes], str, int]:
        data, content_type = self.get(job_id, index)
        return iter([data]), content_type, len(data)

    def presigned_url(self, job_id: str, index: int, expires_s: int) -> str | None:
        return None  # a local file has no URL of its own: the gateway sends it

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)

    def purge_older_than(self, age_s: float) -> int:
        """Delete job directories not modified for `age_s` seconds (retention). Returns how many."""
        cutoff = time.time() - age_s
        removed = 0
        for directory in self.root.glob("job_*"):
            if directory.is_dir() and directory.stat().st_mtime < cutoff:
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
        return removed


class S3Storage:
    """Images as objects PREFIX/images/{job_id}/{index} of an S3-compatible bucket."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def _key(self, job_id: str, index: int) -> str:
        if index < 0:
            raise NotFound(f"image {index} of job {job_id} not found")
        return f"images/{check_job_id(job_id)}/{int(index)}"

    def put(self, job_id: str, index: int, data: bytes, content_type: str) -> None:
        self.store.put(self._key(job_id, index), data, content_type=content_type)

    def get(self, job_id: str, index: int) -> tuple[bytes, str]:
        try:
            return self.store.get(self._key(job_id, index))
        except NotFound:
            raise NotFound(f"image {index} of job {job_id} not found") from None

    def stream(self, job_id: str, index: int) -> tuple[Iterator[bytes], str, int]:
        try:
            return self.store.stream(self._key(job_id, index))
        except NotFound:
            raise NotFound(f"image {index} of job {job_id} not found") from None

    def presigned_url(self, job_id: str, index: int, expires_s: int) -> str | None:
        return self.store.presigned_url(self._key(job_id, index), expires_s=expires_s)

    def delete_job(self, job_id: str) -> None:
        keys = [item.key for item in self.store.list(f"images/{check_job_id(job_id)}/")]
        self.store.delete_many(keys)

    def purge_older_than(self, age_s: float) -> int:
        """Delete images stored more than `age_s` seconds ago. Returns how many jobs lost images."""
        cutoff = time.time() - age_s
        old = [item for item in self.store.list("images/") if item.modified.timestamp() < cutoff]
        self.store.delete_many([item.key for item in old])
        return len({item.key.split("/")[1] for item in old})


def get_storage(settings: Settings) -> Storage:
    """The image store GENSVC_STORAGE_URL names (s3://...), else the local GENSVC_STORAGE_DIR."""
    if settings.storage_url:
        from generative_service.object_store import ObjectStore

        return S3Storage(ObjectStore(settings))
    return LocalStorage(settings.storage_dir)
