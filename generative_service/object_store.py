"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...) through boto3.

`GENSVC_STORAGE_URL=s3://BUCKET/PREFIX` puts images and LoRA adapters under PREFIX in BUCKET;
`GENSVC_S3_ENDPOINT_URL` points at a non-AWS server (path-style addressing is then used, which
every S3-compatible server understands). Credentials and region come from the standard AWS chain
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `~/.aws/config`, instance roles).

Layout under PREFIX: `images/JOB_ID/INDEX` and `loras/NAME.safetensors`.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlparse

from generative_service.errors import Conflict, NotFound, Unavailable
from generative_service.settings import Settings

CHUNK_BYTES = 256 * 1024


class _NoConditionalWrites(Exception):
    """The server answered 501 to `If-None-Match: *` on PutObject."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    modified: dt.datetime
    metadata: dict[str, str]


def parse_storage_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; the prefix has no leading or trailing '/'."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"storage URL must look like s3://BUCKET/PREFIX, got {url!r}")
    return parsed.netloc, parsed.path.strip("/")


class ObjectStore:
    """Objects under one prefix of one bucket. Keys given to methods are relative to the prefix."""

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = parse_storage_url(settings.storage_url)
        config = Config(
            signature_version="s3v4",
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
            connect_timeout=5,
            read_timeout=60,
        )
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=settings.s3_endpoint_url or None, config=config
        )
        from botocore.exceptions import BotoCoreError, ClientError

        self._client_error = ClientError
        self._transport_errors = (BotoCoreError,)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except self._client_error as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"object {kwargs.get('Key', '')!r} not found") from None
            if code in ("NotImplemented", "501") and "IfNoneMatch" in kwargs:
                raise _NoConditionalWrites() from None
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                # an `if_absent` write lost to another writer of the same key
                raise Conflict(f"object {kwargs.get('Key', '')!r} already exists") from None
            if code in ("NoSuchBucket",):
                raise Unavailable(
                    f"object storage: bucket {self.bucket!r} does not exist"
                ) from None
            raise Unavailable(f"object storage: {code or exc}") from None
        except self._transport_errors as exc:
            raise Unavailable(f"object storage unreachable: {exc}") from None

    def ensure_bucket(self) -> bool:
        """Create the bucket if it does not exist (MinIO in development; production pre-creates
        it). True when it was created."""
        try:
            self._call("head_bucket")
            return False
        except NotFound:
            self._call("create_bucket")
            return True

    def put(
        self,
        key: str,
        body: bytes | IO[bytes],
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        if_absent: bool = False,
    ) -> None:
        """Write one object; S3 makes it visible whole or not at all.

        `if_absent`: a create-only write (`If-None-Match: *`, one PUT; AWS S3, MinIO and moto
        honour it). Raises Conflict when the key exists, or appears while this write runs. A
        server that refuses the condition (501) gets a plain PUT: the later of two racing
        writers then wins.
        """
        if isinstance(body, bytes) or if_absent:
            args = {"Key": self._key(key), "ContentType": content_type, "Metadata": metadata or {}}
            if if_absent:
                start = body.tell() if not isinstance(body, bytes) else 0
                try:
                    self._call("put_object", Body=body, IfNoneMatch="*", **args)
                    return
                except _NoConditionalWrites:
                    if not isinstance(body, bytes):
                        body.seek(start)
            self._call("put_object", Body=body, **args)
            return
        try:
            self.client.upload_fileobj(
                body,
                self.bucket,
                self._key(key),
                ExtraArgs={"ContentType": content_type, "Metadata": metadata or {}},
            )
        except (self._client_error, *self._transport_errors) as exc:
            raise Unavailable(f"object storage: upload failed: {exc}") from None

    def get(self, key: str) -> tuple[bytes, str]:
        """(bytes, content type) of one object."""
        response = self._call("get_object", Key=self._key(key))
        with response["Body"] as body:
            return body.read(), response.get("ContentType", "application/octet-stream")

    def stream(self, key: str) -> tuple[Iterator[bytes], str, int]:
        """(chunks, content type, length): the object read as it is sent on."""
        response = self._call("get_object", Key=self._key(key))
        body = response["Body"]

        def chunks() -> Iterator[bytes]:
            with body:
                yield from body.iter_chunks(CHUNK_BYTES)

        return (
            chunks(),
            response.get("ContentType", "application/octet-stream"),
            int(response.get("ContentLength", 0)),
        )

    def download(self, key: str, handle: IO[bytes]) -> None:
        try:
            self.client.download_fileobj(self.bucket, self._key(key), handle)
        except self._client_error as exc:
            if exc.response.get("Error", {}).get("Code", "") in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"object {key!r} not found") from None
            raise Unavailable(f"object storage: download failed: {exc}") from None
        except self._transport_errors as exc:
            raise Unavailable(f"object storage unreachable: {exc}") from None

    def head(self, key: str) -> ObjectInfo:
        response = self._call("head_object", Key=self._key(key))
        return ObjectInfo(
            key=key,
            size=int(response.get("ContentLength", 0)),
            modified=response["LastModified"],
            metadata=dict(response.get("Metadata", {})),
        )

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix` (no metadata: listing does not return it)."""
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self._key(""))
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"][strip:],
                        size=int(item["Size"]),
                        modified=item["LastModified"],
                        metadata={},
                    )
        except (self._client_error, *self._transport_errors) as exc:
            raise Unavailable(f"object storage: listing failed: {exc}") from None

    def delete_many(self, keys: builtins.list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})

    def presigned_url(self, key: str, *, expires_s: int) -> str:
        """A time-limited GET URL of the object that needs no credentials."""
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires_s,
        )
