"""sha256 of model files for reproducibility records, cached on disk by (path, size, mtime).

Hashing a full SDXL checkpoint takes tens of seconds; a worker restart should not pay it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

_CHUNK = 8 * 1024 * 1024
_HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".txt", ".model")


class FileHasher:
    """Hashes files, remembering results in `cache_file` (JSON) across processes."""

    def __init__(self, cache_file: Path | None) -> None:
        self.cache_file = cache_file
        self._lock = threading.Lock()
        self._cache: dict[str, list] = self._read()

    def sha256(self, path: Path) -> str:
        """Hex sha256 of the file at `path` (cached while its size and mtime are unchanged)."""
        path = Path(path).resolve()
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        with self._lock:
            entry = self._cache.get(str(path))
        if entry and entry[:2] == stamp:
            return entry[2]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        value = digest.hexdigest()
        with self._lock:
            self._cache[str(path)] = [*stamp, value]
            self._write()
        return value

    def tree(self, root: Path) -> dict[str, str]:
        """{relative path: sha256} of the weight and config files under `root`, sorted."""
        root = Path(root)
        files = sorted(
            path
            for path in root.rglob("*")
            if path.is_file()
            and path.suffix in _HASHED_SUFFIXES
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
        )
        return {str(path.relative_to(root)): self.sha256(path) for path in files}

    def _read(self) -> dict[str, list]:
        if self.cache_file is None:
            return {}
        try:
            return json.loads(Path(self.cache_file).read_text())
        except (OSError, ValueError):
            return {}

    def _write(self) -> None:
        if self.cache_file is None:
            return
        try:
            Path(self.cache_file).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{self.cache_file}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._cache))
            tmp.replace(self.cache_file)
        except OSError:
            pass  # the cache is an optimisation; hashing still works without it


def combined(hashes: dict[str, str]) -> str:
    """One sha256 over a {name: sha256} mapping (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(f"{name}={hashes[name]}\n".encode())
    return digest.hexdigest()
