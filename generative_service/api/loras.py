"""LoRA adapter files: name rules, safetensors header check, atomic no-clobber save, delete.

Uploads stream into a hidden temp file (never a `*.safetensors` name, so no worker sees it
half-written), are checked and hashed, then handed to the LoRA store (`lora_store.py`): the
local directory hard-links it to `NAME.safetensors`, which fails instead of overwriting an
adapter that exists; the bucket store uploads it with its sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from anyio import to_thread

from generative_service import lora_fit, lora_scope, rules
from generative_service.api.responses import LoraInfo
from generative_service.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    LoraError,
    NotFound,
    PayloadTooLarge,
)
from generative_service.lora_store import get_lora_store, with_hashes
from generative_service.settings import Settings

SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own header limit
MAX_DIM = 2**31
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip


def check_name(name: str, field: str = "name") -> str:
    """Return `name` if it is a safe adapter name. Raises InvalidRequest naming `field`."""
    if name.endswith(SUFFIX):
        raise InvalidRequest(
            field, f"give the adapter name without the {SUFFIX} extension, got {name!r}"
        )
    if not rules.lora_name_ok(name):
        raise InvalidRequest(field, f"must be {rules.LORA_NAME_RULE}, got {name!r}")
    if lora_scope.is_reserved(name):
        raise InvalidRequest(
            field, f"names of the form key_<16 hex digits>.NAME are reserved, got {name!r}"
        )
    return name


def name_from_filename(filename: str | None) -> str:
    """The adapter name of an uploaded file `NAME.safetensors` (no directories allowed)."""
    if not filename:
        raise InvalidRequest("file", "the upload has no filename; send a `name` field")
    if "/" in filename or "\\" in filename:
        raise InvalidRequest("file", f"filename must not contain a path, got {filename!r}")
    if not filename.endswith(SUFFIX):
        raise InvalidRequest("file", f"must be a {SUFFIX} file, got {filename!r}")
    return check_name(filename[: -len(SUFFIX)], "file")


def info(settings: Settings, name: str, *, owner: str) -> LoraInfo:
    """The adapter `name` as `owner` sees it (its own private one first). Raises NotFound."""
    store = get_lora_store(settings)
    found = lora_scope.resolve(owner, check_name(name), store.names())
    stored = store.head(found.stored) if found is not None else None
    if found is None or stored is None:
        raise NotFound(f"LoRA {name!r} not found")
    return LoraInfo(
        name=found.name, size_bytes=stored.size_bytes, sha256=stored.sha256, scope=found.scope
    )


def list_all(settings: Settings, *, owner: str) -> list[LoraInfo]:
    """Every shared adapter and `owner`'s private ones; others' private adapters are not shown."""
    store = get_lora_store(settings)
    by_name = {item.name: item for item in store.list()}
    shown = [
        (seen, item)
        for seen in lora_scope.visible(owner, list(by_name))
        if (item := by_name.get(seen.stored)) is not None
    ]
    hashed = with_hashes(store, [item for _, item in shown])  # only what `owner` may see
    return [
        LoraInfo(name=seen.name, size_bytes=item.size_bytes, sha256=item.sha256, scope=seen.scope)
        for (seen, _), item in zip(shown, hashed, strict=True)
    ]


def delete(settings: Settings, name: str, *, owner: str) -> None:
    """Delete `owner`'s private adapter `name`, or (admins only) the shared one.

    Raises:
        NotFound: no such adapter visible to `owner`.
        Forbidden: a shared adapter and `owner` is not an admin key.
    """
    store = get_lora_store(settings)
    found = lora_scope.resolve(owner, check_name(name), store.names())
    if found is None:
        raise NotFound(f"LoRA {name!r} not found")
    if found.scope == "shared" and not lora_scope.is_admin(settings, owner):
        raise Forbidden(
            f"LoRA {name!r} is a shared adapter; only admin keys (GENSVC_ADMIN_KEYS) may change it"
        )
    store.delete(found.stored)


async def save(
    settings: Settings,
    name: str,
    chunks: AsyncIterator[bytes],
    *,
    owner: str,
    layers: dict | None = None,
    model: str = "",
) -> LoraInfo:
    """Stream `chunks` into adapter `name`. Raises Conflict, PayloadTooLarge or LoraError('file').

    With `layers` (what a worker published, see lora_fit.py) the file must also fit the model.
    """
    check_name(name)
    target = lora_scope.upload_target(settings, owner, name)
    if len(target.stored) > rules.LORA_NAME_MAX:
        raise InvalidRequest(
            "name",
            f"must be at most {rules.LORA_NAME_MAX - len(target.stored) + len(name)} "
            "characters for a private adapter",
        )
    store = get_lora_store(settings)
    if await to_thread.run_sync(store.head, target.stored) is not None:
        raise Conflict(f"LoRA {name!r} already exists; delete it first")
    directory = await to_thread.run_sync(store.staging_dir)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".upload-{name}-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        size, sha256 = await _write_all(fd, chunks, settings.max_lora_bytes)
        shapes = await to_thread.run_sync(check_safetensors, tmp, size)
        if layers:
            lora_fit.check_fit(shapes, layers, model=model)
        stored = await to_thread.run_sync(lambda: store.put(target.stored, tmp, sha256=sha256))
    finally:
        tmp.unlink(missing_ok=True)
    return LoraInfo(
        name=name, size_bytes=stored.size_bytes, sha256=stored.sha256, scope=target.scope
    )


async def _write_all(fd: int, chunks: AsyncIterator[bytes], limit: int) -> tuple[int, str]:
    size = 0
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as handle:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"file: larger than GENSVC_MAX_LORA_BYTES ({limit} bytes)")
            if chunk:
                digest.update(chunk)
                await to_thread.run_sync(handle.write, chunk)
    return size, digest.hexdigest()


def check_safetensors(path: Path, size: int) -> dict[str, list[int]]:
    """Validate `path` (size bytes) as the safetensors loader would, and that it holds LoRA weights.

    Returns the tensors' shapes by name. Raises LoraError('file', reason).
    """
    if size < 8:
        raise LoraError("file", f"not a safetensors file ({size} bytes is shorter than its header)")
    with open(path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if header_len < 2 or header_len > min(size - 8, MAX_HEADER_BYTES):
            raise LoraError(
                "file",
                f"not a safetensors file (header length {header_len} does not fit a {size}-byte file)",
            )
        try:
            header = json.loads(handle.read(header_len))
        except RecursionError:
            raise LoraError("file", "the safetensors header is nested too deep") from None
        except (ValueError, UnicodeDecodeError):
            raise LoraError("file", "not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise LoraError("file", "not a safetensors file (header is not a JSON object)")
    _check_metadata(header.get("__metadata__"))
    tensors = {key: value for key, value in header.items() if key != "__metadata__"}
    if not tensors:
        raise LoraError("file", "the safetensors file holds no tensors")
    data_len = size - 8 - header_len
    spans = sorted((_check_entry(key, entry, data_len), key) for key, entry in tensors.items())
    _check_layout(spans, data_len)
    if not any("lora" in key.lower() for key in tensors):
        raise LoraError(
            "file",
            "holds no LoRA weights (no tensor name contains 'lora'); is it a full checkpoint?",
        )
    others = [key for key in tensors if "lora" not in key.lower() and not key.endswith(".alpha")]
    if others:
        raise LoraError(
            "file",
            f"tensor {others[0]!r} is not a LoRA weight ({len(others)} such tensor(s)); an adapter "
            "holds only lora_A/lora_B (or lora_down/lora_up) weights and alphas",
        )
    return {key: entry["shape"] for key, entry in tensors.items()}


def _check_metadata(metadata: object) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise LoraError("file", "__metadata__ must be an object of string values")


def _check_entry(key: str, entry: object, data_len: int) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise LoraError("file", f"tensor {key!r}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise LoraError("file", f"tensor {key!r}: unknown dtype {dtype!r}")
    # NOTE: `type(...) is int`: JSON true is a Python int, and 1e30 a float; neither is a size.
    if not isinstance(shape, list) or not all(
        type(dim) is int and 0 <= dim <= MAX_DIM for dim in shape
    ):
        raise LoraError(
            "file", f"tensor {key!r}: bad shape {json.dumps(shape)} (whole numbers expected)"
        )
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
    ):
        raise LoraError("file", f"tensor {key!r}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len or end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise LoraError(
            "file",
            f"tensor {key!r}: data_offsets {offsets} do not match its shape and the file size",
        )
    return begin, end


def _check_layout(spans: list[tuple[tuple[int, int], str]], data_len: int) -> None:
    """The tensors must tile the data section exactly: no overlap, no gap, nothing after."""
    position = 0
    for (begin, end), key in spans:
        if begin < position:
            raise LoraError("file", f"tensor {key!r}: data_offsets overlap another tensor's")
        if begin > position:
            raise LoraError(
                "file", f"tensor {key!r}: a gap of {begin - position} bytes before its data"
            )
        position = end
    if position != data_len:
        raise LoraError(
            "file", f"{data_len - position} bytes after the last tensor belong to no tensor"
        )
