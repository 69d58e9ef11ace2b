"""SSRF guard: every refused form names its reason; public destinations are pinned."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from generative_service import webhooks
from generative_service.errors import InvalidRequest
from generative_service.settings import Settings
from generative_service.webhooks import guard

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PUBLIC = "93.184.215.14"


def public_dns(host: str, port: int) -> list[str]:
    return [PUBLIC]


def strict(**overrides) -> Settings:
    return Settings(key_prefix="t_guard", webhook_secrets=[SECRET], **overrides)


REFUSED = [
    # loopback, in every spelling
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.8.9.10/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://2130706433/hook", "non-canonical"),
    ("http://0x7f.1/hook", "non-canonical"),
    ("http://0x7f000001/hook", "non-canonical"),
    ("http://0177.0.0.1/hook", "non-canonical"),
    ("http://127.1/hook", "non-canonical"),
    ("http://0/hook", "non-canonical"),
    ("http://%31%32%37.0.0.1/hook", "non-canonical"),
    # private, CGNAT, link-local, metadata, multicast, unspecified, reserved
    ("http://10.1.2.3/hook", "private"),
    ("http://172.16.0.1/hook", "private"),
    ("http://192.168.0.10/hook", "private"),
    ("http://[fd12:3456::1]/hook", "private"),
    ("http://100.64.0.1/hook", "carrier-grade NAT"),
    ("http://100.127.255.254/hook", "carrier-grade NAT"),
    ("http://169.254.1.1/hook", "link-local"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://[ff02::1]/hook", "multicast"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://[::]/hook", "unspecified"),
    ("http://240.0.0.1/hook", "reserved"),
    ("http://255.255.255.255/hook", "reserved"),
    ("http://198.18.0.1/hook", "private"),
    # IPv6 encodings of internal IPv4 addresses
    ("http://[::ffff:127.0.0.1]/hook", "loopback address (127.0.0.1) in an IPv6 encoding"),
    (
        "http://[::ffff:a9fe:a9fe]/hook",
        "cloud metadata address (169.254.169.254) in an IPv6 encoding",
    ),
    ("http://[::ffff:10.0.0.1]/hook", "private address (10.0.0.1) in an IPv6 encoding"),
    ("http://[64:ff9b::7f00:1]/hook", "loopback address (127.0.0.1) in an IPv6 encoding"),
    (
        "http://[64:ff9b::a9fe:a9fe]/hook",
        "cloud metadata address (169.254.169.254) in an IPv6 encoding",
    ),
    ("http://[64:ff9b::c0a8:1]/hook", "private address (192.168.0.1) in an IPv6 encoding"),
    ("http://[2002:7f00:1::]/hook", "loopback address (127.0.0.1) in an IPv6 encoding"),
    (
        "http://[2002:a9fe:a9fe::1]/hook",
        "cloud metadata address (169.254.169.254) in an IPv6 encoding",
    ),
    ("http://[::127.0.0.1]/hook", "loopback address (127.0.0.1) in an IPv6 encoding"),
    ("http://[fe80::1%25eth0]/hook", "zone identifiers"),
    # URL forms
    ("ftp://example.com/hook", "scheme 'ftp'"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://example.com/", "scheme 'gopher'"),
    ("javascript:alert(1)", "scheme 'javascript'"),
    ("//example.com/hook", "scheme '(none)'"),
    ("http://user:secret@example.com/hook", "credentials"),
    ("http://user@example.com/hook", "credentials"),
    ("http://example.com\\@10.0.0.1/hook", "backslashes"),
    ("http://exa mple.com/hook", "whitespace"),
    ("http://example.com/ho\nok", "control characters"),
    ("http://example.com:22/hook", "port 22 is not allowed"),
    ("http://example.com:6379/hook", "port 6379 is not allowed"),
    ("http://example.com:0/hook", "port"),
    ("http://example.com:99999/hook", "port"),
    ("http:///hook", "no host"),
    ("http://exa_mple..com/hook", "not a valid host name"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused(url: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        # Names resolve to a public address here: only the URL itself can be at fault.
        webhooks.validate_url(
            url, strict(), resolver=lambda h, p: ["127.0.0.1"] if h == "localhost" else [PUBLIC]
        )
    assert caught.value.field == "webhook"
    assert reason in caught.value.reason


def test_name_resolving_to_an_internal_address_is_refused() -> None:
    with pytest.raises(
        InvalidRequest, match=r"hooks.example.com \(10.0.0.7\) is a private address"
    ):
        webhooks.validate_url(
            "https://hooks.example.com/in", strict(), resolver=lambda h, p: ["10.0.0.7"]
        )


def test_every_resolved_address_must_be_public() -> None:
    """One internal answer among public ones (a rebinding setup) refuses the destination."""
    with pytest.raises(InvalidRequest, match="169.254.169.254"):
        webhooks.validate_url(
            "https://hooks.example.com/in",
            strict(),
            resolver=lambda h, p: [PUBLIC, "169.254.169.254"],
        )


def test_unresolvable_host_is_refused_at_submit() -> None:
    def no_such_host(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(InvalidRequest, match="does not resolve") as caught:
        webhooks.validate_url("https://nowhere.invalid/hook", strict(), resolver=no_such_host)
    assert caught.value.field == "webhook"


def test_public_destination_is_pinned_with_host_and_sni_name_kept() -> None:
    destination = guard.resolve_destination(
        "https://Hooks.Example.com:8443/in?x=1#frag", strict(), resolver=public_dns
    )
    assert destination.addresses == (ip_address(PUBLIC),)
    assert destination.url_for(destination.addresses[0]) == f"https://{PUBLIC}:8443/in?x=1"
    assert destination.host == "hooks.example.com"
    assert destination.host_header == "hooks.example.com:8443"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in",
        "http://8.8.8.8/in",
        "http://[2606:4700:4700::1111]:8080/in",
        "http://[64:ff9b::808:808]/in",
        "https://xn--bcher-kva.example/in",
        "https://bücher.example/in",
    ],
)
def test_public_destinations_are_accepted(url: str) -> None:
    webhooks.validate_url(url, strict(), resolver=public_dns)


def test_ipv6_literal_gets_brackets_in_url_and_host() -> None:
    destination = guard.resolve_destination("http://[2606:4700:4700::1111]:8080/in", strict())
    assert destination.url_for(destination.addresses[0]) == "http://[2606:4700:4700::1111]:8080/in"
    assert destination.host_header == "[2606:4700:4700::1111]:8080"


def test_loopback_needs_the_setting_and_then_any_port_is_fine() -> None:
    with pytest.raises(InvalidRequest, match="loopback"):
        webhooks.validate_url("http://127.0.0.1:9999/hook", strict())
    relaxed = strict(webhook_allow_loopback=True)
    webhooks.validate_url("http://127.0.0.1:9999/hook", relaxed)
    webhooks.validate_url("http://[::1]:9999/hook", relaxed)
    webhooks.validate_url(
        "http://localhost:9999/hook", relaxed, resolver=lambda h, p: ["127.0.0.1", "::1"]
    )
    # The setting allows loopback only: private, metadata and non-loopback odd ports stay refused.
    for url, reason in [
        ("http://10.0.0.1/hook", "private"),
        ("http://169.254.169.254/", "metadata"),
        ("http://8.8.8.8:9999/", "port 9999"),
    ]:
        with pytest.raises(InvalidRequest, match=reason):
            webhooks.validate_url(url, relaxed)
    with pytest.raises(InvalidRequest, match="non-canonical"):
        webhooks.validate_url("http://2130706433:9999/hook", relaxed)


def test_no_secret_means_webhooks_are_refused_at_submit() -> None:
    with pytest.raises(InvalidRequest, match="GENSVC_WEBHOOK_SECRETS") as caught:
        webhooks.validate_url(
            "https://hooks.example.com/in", Settings(key_prefix="t_guard"), resolver=public_dns
        )
    assert caught.value.field == "webhook"


def test_system_resolver_resolves_localhost() -> None:
    addresses = guard.system_resolver("localhost", 80)
    assert addresses and all(ip_address(a).is_loopback for a in addresses)
