"""Image storage backends. The local directory backend is shared by gateway and workers.

Layout: STORAGE_DIR/{job_id}/{index}.{ext}. Writes are idempotent per job and index (a retried
job overwrites, never duplicates) and atomic (written to a temp file, then renamed), so a reader
never sees half an image.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from generative_service.errors import NotFound

if TYPE_CHECKING:
    from PIL.Image import Image

    from generative_service.settings import Settings

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {value: key for key, value in CONTENT_TYPES.items()}


def encode_image(image: Image, fmt: str) -> tuple[bytes, str]:
    """Encode a PIL image as png/jpeg/webp; returns (bytes, content type)."""
    buffer = io.BytesIO()
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
    def delete_job(self, job_id: str) -> None: ...
    def purge_older_than(self, age_s: float) -> int: ...


class LocalStorage:
    """Images as files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _job_dir(self, job_id: str) -> Path:
        # NOTE: job ids come from URLs; refuse anything that could leave the storage root.
        if not job_id.startswith("job_") or not job_id[4:].isalnum():
            raise NotFound(f"job {job_id!r} not found")
        return self.root / job_id

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


def get_storage(settings: Settings) -> Storage:
    return LocalStorage(settings.storage_dir)
