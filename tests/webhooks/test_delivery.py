"""One delivery attempt against a real local receiver: signing, outcomes, retries, pinning, caps."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import ThreadingHTTPServer

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from generative_service import webhooks
from generative_service.schemas import Event
from generative_service.settings import Settings
from generative_service.webhooks import delivery, outbox

from .conftest import SECRET_A, SECRET_B, Receiver, _handler, make_settings


def message_for(
    url: str, event_type: str = "started", job_id: str = "job_0123456789abcdef01234567"
) -> dict:
    return outbox.build_message(url, Event(type=event_type, job_id=job_id))


def scheduled(redis: Redis, settings: Settings) -> list[Job]:
    queue = Queue(settings.keys.webhooks_queue, connection=redis)
    ids = ScheduledJobRegistry(queue=queue).get_job_ids()
    return [Job.fetch(job_id, connection=redis) for job_id in ids]


def attempt(redis: Redis, settings: Settings, message: dict, number: int = 1, **kwargs) -> dict:
    delivery.run_attempt(redis, settings, message, number, **kwargs)
    return webhooks.list_attempts(redis, settings, message["job_id"])[-1]


def test_delivery_is_signed_with_every_rotated_secret(
    redis_client, settings, receiver: Receiver
) -> None:
    message = message_for(receiver.url())
    entry = attempt(redis_client, settings, message)

    assert entry["outcome"] == "delivered" and entry["status_code"] == 200
    (request,) = receiver.requests
    assert request.body == message["body"].encode()
    assert request.headers["webhook-id"] == message["id"] == entry["webhook_id"]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET_A, SECRET_B):
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["type"] == "job.started" and payload["data"]["job_id"] == message["job_id"]
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "c29tZS1vdGhlci1zZWNyZXQtbm90LWNvbmZpZ3VyZWQ=").verify(
            request.body, request.headers
        )
    assert request.headers["content-type"] == "application/json"
    assert scheduled(redis_client, settings) == []


@pytest.mark.parametrize(
    ("status", "outcome", "retried"),
    [
        (204, "delivered", False),
        (410, "gone", False),
        (400, "failed", False),
        (404, "failed", False),
        (429, "retry", True),
        (500, "retry", True),
        (503, "retry", True),
    ],
)
def test_status_code_decides_outcome_and_retry(
    redis_client, settings, receiver: Receiver, status: int, outcome: str, retried: bool
) -> None:
    receiver.default = status
    message = message_for(receiver.url())
    entry = attempt(redis_client, settings, message)

    assert (entry["outcome"], entry["status_code"]) == (outcome, status)
    jobs = scheduled(redis_client, settings)
    assert bool(jobs) == retried and bool(entry["next_retry_at"]) == retried
    if retried:
        (job,) = jobs
        assert job.args == (message, 2)  # the same message (same webhook-id and body), next attempt


def test_redirect_is_a_failure_and_never_followed(
    redis_client, settings, receiver: Receiver
) -> None:
    receiver.default = (302, {"location": receiver.url("/elsewhere")})
    entry = attempt(redis_client, settings, message_for(receiver.url()))

    assert entry["status_code"] == 302 and entry["outcome"] == "retry"
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_retry_after_is_honoured_and_capped(redis_client, settings, receiver: Receiver) -> None:
    receiver.script = [
        (429, {"retry-after": "7"}),
        (503, {"retry-after": "86400"}),
        (
            503,
            {
                "retry-after": format_datetime(
                    datetime.now(UTC) + timedelta(seconds=12), usegmt=True
                )
            },
        ),
    ]
    message = message_for(receiver.url())
    waits = []
    for number in (1, 2, 3):
        entry = attempt(redis_client, settings, message, number)
        waits.append(
            (
                datetime.fromisoformat(entry["next_retry_at"]) - datetime.fromisoformat(entry["at"])
            ).total_seconds()
        )

    # The schedule says 0.2 s; the receiver's Retry-After wins, up to WEBHOOK_RETRY_AFTER_MAX_S (30).
    assert 7 <= waits[0] < 9
    assert 30 <= waits[1] < 32
    assert 10 <= waits[2] < 14


def test_used_up_schedule_fails_for_good(redis_client, settings, receiver: Receiver) -> None:
    receiver.default = 500
    entry = attempt(
        redis_client, settings, message_for(receiver.url()), len(settings.retry_schedule_s) + 1
    )
    assert entry["outcome"] == "failed" and entry["next_retry_at"] is None
    assert scheduled(redis_client, settings) == []


def test_receiver_that_hangs_times_out_and_is_retried(
    redis_client, settings, receiver: Receiver
) -> None:
    receiver.default = "hang"
    quick = settings.model_copy(update={"webhook_timeout_s": 0.3})
    entry = attempt(redis_client, quick, message_for(receiver.url()))
    assert entry["outcome"] == "retry" and entry["status_code"] is None
    assert entry["error"].startswith("timeout")


def test_connection_refused_is_retried(redis_client, settings) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    entry = attempt(redis_client, settings, message_for(f"http://127.0.0.1:{port}/hook"))
    assert entry["outcome"] == "retry" and "connect to 127.0.0.1" in entry["error"]


def test_response_body_is_not_read_past_the_cap(redis_client, settings, receiver: Receiver) -> None:
    receiver.default = "flood"
    entry = attempt(redis_client, settings, message_for(receiver.url()))
    assert entry["outcome"] == "delivered"
    assert receiver.flood_done.wait(10)
    # The receiver offered 64 MiB; the sender hung up after its cap (kernel buffers took the rest).
    assert receiver.flooded < receiver.flood_bytes // 4


def test_connects_to_the_pinned_address_with_the_original_host_header(
    redis_client, settings, receiver: Receiver
) -> None:
    lookups = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    url = f"http://hooks.example.test:{receiver.port}/hook"
    entry = attempt(redis_client, settings, message_for(url), resolver=resolver)
    assert entry["outcome"] == "delivered"
    assert lookups == ["hooks.example.test"]  # resolved once, then connected to that answer
    assert receiver.requests[0].headers["host"] == f"hooks.example.test:{receiver.port}"


def test_dns_change_at_delivery_is_refused_and_not_retried(redis_client, settings) -> None:
    message = message_for("https://hooks.example.test/hook")
    strict = settings.model_copy(update={"webhook_allow_loopback": False})
    webhooks.validate_url(
        message["url"], strict, resolver=lambda h, p: ["93.184.215.14"]
    )  # fine at submit

    entry = attempt(redis_client, strict, message, resolver=lambda h, p: ["169.254.169.254"])
    assert entry["outcome"] == "refused" and "cloud metadata" in entry["error"]
    assert scheduled(redis_client, settings) == []


def test_unresolvable_host_at_delivery_is_retried(redis_client, settings) -> None:
    def gone(host: str, port: int) -> list[str]:
        raise OSError("Temporary failure in name resolution")

    entry = attempt(
        redis_client, settings, message_for("https://hooks.example.test/hook"), resolver=gone
    )
    assert entry["outcome"] == "retry" and entry["error"].startswith("dns:")


def test_no_secret_at_delivery_is_refused(redis_client, settings, receiver: Receiver) -> None:
    unsigned = settings.model_copy(update={"webhook_secrets": []})
    entry = attempt(redis_client, unsigned, message_for(receiver.url()))
    assert entry["outcome"] == "refused" and "GENSVC_WEBHOOK_SECRETS" in entry["error"]
    assert receiver.requests == []


def test_attempts_are_counted_by_outcome(redis_client, settings, receiver: Receiver) -> None:
    receiver.script = [500, 200]
    message = message_for(receiver.url())
    attempt(redis_client, settings, message, 1)
    attempt(redis_client, settings, message, 2)
    counts = redis_client.hgetall(f"{settings.key_prefix}:metrics:counter:webhook_deliveries")
    assert {k.decode(): float(v) for k, v in counts.items()} == {"retry": 1.0, "delivered": 1.0}
    log = webhooks.list_attempts(redis_client, settings, message["job_id"])
    assert [(e["attempt"], e["outcome"], e["webhook_id"]) for e in log] == [
        (1, "retry", message["id"]),
        (2, "delivered", message["id"]),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 120 ", 120.0),
        (None, None),
        ("soon", None),
        ("-3", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value, expected) -> None:
    assert delivery.parse_retry_after(value) == expected


# --- HTTPS: pinned address, SNI and certificate checked against the name -------------------------


@pytest.fixture
def tls_receiver(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=hooks.example.test", "-addext", "subjectAltName=DNS:hooks.example.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_names: list[str | None] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    rec = Receiver()
    rec.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    rec.server.socket = server_context.wrap_socket(rec.server.socket, server_side=True)
    thread = threading.Thread(
        target=rec.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    client_context = ssl.create_default_context(cafile=str(cert))
    yield rec, server_names, client_context
    rec.server.shutdown()
    rec.server.server_close()


def test_https_keeps_sni_and_verifies_the_certificate_for_the_name(
    redis_client, settings, tls_receiver
) -> None:
    rec, server_names, client_context = tls_receiver
    to_loopback = lambda host, port: ["127.0.0.1"]  # noqa: E731

    entry = attempt(
        redis_client,
        settings,
        message_for(f"https://hooks.example.test:{rec.port}/hook"),
        resolver=to_loopback,
        ssl_context=client_context,
    )
    assert entry["outcome"] == "delivered"
    assert server_names == ["hooks.example.test"]
    assert rec.requests[0].headers["host"] == f"hooks.example.test:{rec.port}"

    # Same address, another name: the certificate does not match that name, so nothing is sent.
    entry = attempt(
        redis_client,
        settings,
        message_for(f"https://other.example.test:{rec.port}/hook"),
        resolver=to_loopback,
        ssl_context=client_context,
    )
    assert entry["outcome"] == "retry" and "certificate" in entry["error"].lower()
    assert len(rec.requests) == 1


def test_settings_reject_a_secret_that_is_not_base64() -> None:
    with pytest.raises(ValueError, match="base64"):
        make_settings("t_wh_x", webhook_secrets=["whsec_not*base64!"])


def test_webhook_body_is_the_event_payload(redis_client, settings, receiver: Receiver) -> None:
    event = Event(
        type="succeeded",
        job_id="job_0123456789abcdef01234567",
        job={"id": "job_0123456789abcdef01234567", "status": "succeeded"},
    )
    message = outbox.build_message(receiver.url(), event)
    attempt(redis_client, settings, message)
    body = json.loads(receiver.requests[0].body)
    assert body == {
        "type": "job.succeeded",
        "timestamp": event.to_payload()["at"],
        "data": event.to_payload(),
    }
