"""The verification snippets of docs/webhooks.md, run as written against a signed delivery."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from generative_service.settings import Settings
from generative_service.webhooks import signing

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_each_snippet_verifies_a_real_signature_and_rejects_a_forged_one():
    body = json.dumps({"type": "job.succeeded", "data": {"job_id": "job_x"}}).encode()
    keys = signing.secret_keys(Settings(webhook_secrets=[SECRET]))
    headers = signing.headers(keys, "msg_1", int(time.time()), body)
    forged = {**headers, "webhook-signature": "v1,AAAA" + headers["webhook-signature"][7:]}
    snippets = _snippets()
    assert len(snippets) == 2
    for code in snippets:
        scope: dict = {"raw_body": body, "headers": headers}
        exec(code.replace("whsec_...", SECRET), scope)  # noqa: S102 - our own documentation
        if "receive" in scope:
            assert scope["receive"](body, headers)["type"] == "job.succeeded"
            try:
                scope["receive"](body, forged)
            except PermissionError:
                pass
            else:
                raise AssertionError("a forged signature was accepted")
        else:
            assert scope["event"]["type"] == "job.succeeded"
            try:
                exec(code.replace("whsec_...", SECRET), {**scope, "headers": forged})  # noqa: S102
            except Exception as exc:  # noqa: BLE001 - svix's WebhookVerificationError
                assert type(exc).__name__ == "WebhookVerificationError"
            else:
                raise AssertionError("a forged signature was accepted")
