"""Images in an S3-compatible bucket (moto's S3 server in a subprocess): the gateway streams them
or redirects to presigned URLs, retention deletes them, and nothing is written to local disk."""

from __future__ import annotations

import boto3
import httpx
import pytest
from PIL import Image
from support import check_error, free_port

from generative_service.errors import NotFound
from generative_service.jobs import JobStore
from generative_service.schemas import BatchInfo, ImageInfo, NsfwVerdict, Timings
from generative_service.storage import S3Storage, encode_image, get_storage, image_url

REQUEST = {"prompt": "a red circle", "steps": 2, "seed": 7, "num_images": 2}


def bucket_keys(settings) -> list[str]:
    bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def finish(redis, settings, job_id: str) -> list[bytes]:
    """Do what a worker does to succeed `job_id`: store its images, then mark it succeeded."""
    store, storage = JobStore(redis, settings), get_storage(settings)
    request = store.get(job_id).request
    store.queue.rq_queue(store.get(job_id).queue).remove(job_id)
    store.mark_started(job_id, batch=BatchInfo(id="batch_test", size=1), worker_id="fake")
    images, stored = [], []
    for index in range(request.num_images):
        color = (index * 90, 20, 200)
        data, content_type = encode_image(Image.new("RGB", (64, 64), color), "png")
        storage.put(job_id, index, data, content_type)
        stored.append(data)
        images.append(ImageInfo(index=index, url=image_url(job_id, index), width=64, height=64,
                                seed=request.seed + index, nsfw=NsfwVerdict(flagged=False, score=0.0),
                                blocked=False, content_type=content_type))  # fmt: skip
    store.mark_succeeded(job_id, images=images, timings=Timings(inference_ms=1.0))
    return stored


def test_bucket_storage_round_trip_and_retention(make_s3_settings) -> None:
    settings = make_s3_settings()
    storage = get_storage(settings)
    assert isinstance(storage, S3Storage)
    storage.put("job_abc1", 0, b"png-bytes", "image/png")
    storage.put("job_abc1", 0, b"png-bytes-2", "image/png")  # a retried job overwrites
    storage.put("job_abc1", 1, b"webp-bytes", "image/webp")
    storage.put("job_abc2", 0, b"other", "image/jpeg")
    assert storage.get("job_abc1", 0) == (b"png-bytes-2", "image/png")
    chunks, content_type, length = storage.stream("job_abc1", 1)
    assert (b"".join(chunks), content_type, length) == (b"webp-bytes", "image/webp", 10)
    assert bucket_keys(settings) == [
        "svc/images/job_abc1/0", "svc/images/job_abc1/1", "svc/images/job_abc2/0"
    ]  # fmt: skip
    with pytest.raises(NotFound, match="image 5 of job job_abc1"):
        storage.get("job_abc1", 5)
    with pytest.raises(NotFound):
        storage.get("../etc", 0)  # ids from URLs never leave the images prefix
    storage.delete_job("job_abc2")
    assert bucket_keys(settings) == ["svc/images/job_abc1/0", "svc/images/job_abc1/1"]
    assert storage.purge_older_than(3600) == 0  # young images stay
    assert storage.purge_older_than(0) == 1  # past retention: deleted
    assert bucket_keys(settings) == []
    assert not settings.storage_dir.exists()


def test_gateway_streams_images_from_the_bucket(make_s3_settings, make_api_client, redis) -> None:
    settings = make_s3_settings(image_urls="proxy")
    client = make_api_client(settings)
    job_id = client.post("/v1/jobs", json=REQUEST).json()["id"]
    stored = finish(redis, settings, job_id)
    for index, data in enumerate(stored):
        response = client.get(f"/v1/jobs/{job_id}/images/{index}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content == data
    assert bucket_keys(settings) == [f"svc/images/{job_id}/0", f"svc/images/{job_id}/1"]
    assert not settings.storage_dir.exists()  # nothing on the gateway's disk


def test_gateway_redirects_to_presigned_urls(make_s3_settings, make_api_client, redis) -> None:
    settings = make_s3_settings(image_urls="presigned", presigned_url_ttl_s=60)
    client = make_api_client(settings)
    job_id = client.post("/v1/jobs", json=REQUEST).json()["id"]
    stored = finish(redis, settings, job_id)
    response = client.get(f"/v1/jobs/{job_id}/images/1", follow_redirects=False)
    assert response.status_code == 307
    location = response.headers["location"]
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=60" in location
    image = httpx.get(location)  # no credentials needed: the signature is the permission
    assert image.status_code == 200 and image.content == stored[1]
    # Ownership is still checked by the gateway before it signs anything.
    check_error(client.get(f"/v1/jobs/{job_id}/images/9", follow_redirects=False), 404)


def test_unreachable_object_storage_is_503(make_s3_settings, make_api_client, redis) -> None:
    settings = make_s3_settings()
    job_id = make_api_client(settings).post("/v1/jobs", json=REQUEST).json()["id"]
    finish(redis, settings, job_id)
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    response = make_api_client(down).get(f"/v1/jobs/{job_id}/images/0")
    check_error(response, 503, "unavailable", "object storage unreachable")
    assert response.headers["retry-after"]


def test_storage_url_must_be_s3(make_settings) -> None:
    with pytest.raises(ValueError, match="s3://BUCKET/PREFIX"):
        make_settings(storage_url="gs://bucket/images")


def test_gateway_creates_a_missing_bucket(make_s3_settings, make_api_client) -> None:
    settings = make_s3_settings()
    fresh = settings.model_copy(update={"storage_url": f"s3://new-{settings.key_prefix[-8:]}/x"})
    make_api_client(fresh)  # its start creates the bucket (MinIO in docker compose)
    bucket = fresh.storage_url.removeprefix("s3://").partition("/")[0]
    client = boto3.client("s3", endpoint_url=fresh.s3_endpoint_url)
    assert bucket in [item["Name"] for item in client.list_buckets()["Buckets"]]


def test_create_only_write_falls_back_where_the_server_refuses_the_condition(make_s3_settings):
    """moto honours `If-None-Match: *`; a server answering 501 to it (botocore's Stubber stands
    in for one) still gets the object, with a plain PUT of the same bytes."""
    import io

    from botocore.stub import ANY, Stubber

    from generative_service.errors import Conflict
    from generative_service.object_store import ObjectStore

    store = ObjectStore(make_s3_settings())
    store.put("loras/a.safetensors", io.BytesIO(b"first"), if_absent=True)
    with pytest.raises(Conflict, match="already exists"):
        store.put("loras/a.safetensors", io.BytesIO(b"second"), if_absent=True)
    assert store.get("loras/a.safetensors")[0] == b"first"

    with Stubber(store.client) as stub:
        expected = {"Bucket": ANY, "Key": ANY, "Body": ANY, "ContentType": ANY, "Metadata": ANY}
        stub.add_client_error(
            "put_object", "NotImplemented", http_status_code=501,
            expected_params={**expected, "IfNoneMatch": "*"},
        )  # fmt: skip
        stub.add_response("put_object", {}, expected_params=expected)
        store.put("loras/b.safetensors", io.BytesIO(b"bytes"), if_absent=True)
        stub.assert_no_pending_responses()  # refused with the condition, then written without
