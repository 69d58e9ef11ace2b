"""keys.py is the only module that names Redis keys.

The grep (on the syntax tree, so docstrings and comments that document keys stay allowed): in
every .py file of generative_service/ and workers/ except generative_service/keys.py, a string is
a Redis key formatted outside keys.py when
  1. a literal piece (a plain string, or the text between an f-string's placeholders) holds one of
     our key segments after a colon: ":job:", ":events:", ":worker:", ":models", ":metrics:" ...
     (the segment followed by ':' or the end of the piece), or RQ's "rq:queue:" namespace; or
  2. an f-string interpolates something named like a prefix and goes on with a colon (but not
     a colon and a space) or straight with another placeholder: f"{settings.key_prefix}:{queue}", f"{rq_prefix}{name}".
Unrelated strings stay quiet: "job.submitted", f"{field}: {reason}" (a colon and a space),
f"{host}:{port}" (no prefix placeholder, no key segment), URLs, log event names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from redis import Redis
from rq import Queue

from generative_service.keys import RQ_QUEUE_NAMESPACE, Keys, Ttl
from generative_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SEGMENTS = (
    "job|cancel|events|owner|idem|admitting|stats|epoch|worker|models|running|maintenance|emb"
    "|metrics|counter|hist|webhooks?|throttle|log|hub|evals?|votes|replication-probe"
    "|counts|order|seq|tenants|bell|burst|finished"
)
KEY_SEGMENT = re.compile(rf":(?:{SEGMENTS})(?::|$)|rq:queue:")


def _is_prefix(node: ast.expr) -> bool:
    return isinstance(node, ast.FormattedValue) and "prefix" in ast.unparse(node.value).lower()


def _formats_key(node: ast.JoinedStr) -> bool:
    for here, after in zip(node.values, node.values[1:], strict=False):
        if not _is_prefix(here):
            continue
        if isinstance(after, ast.FormattedValue):
            return True
        text = after.value if isinstance(after, ast.Constant) else ""
        if isinstance(text, str) and re.match(r":(\S|$)", text):
            return True
    return False


def offending_strings(source: str) -> list[str]:
    """The strings in `source` that format a Redis key (see the module docstring)."""
    tree = ast.parse(source)
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    hits = []
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if KEY_SEGMENT.search(node.value):
                hits.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.JoinedStr) and _formats_key(node):
            hits.append(f"line {node.lineno}: {ast.unparse(node)}")
    return hits


def test_no_module_but_keys_formats_a_redis_key():
    found = {}
    for folder in ("generative_service", "workers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "generative_service" / "keys.py":
                continue
            hits = offending_strings(path.read_text())
            if hits:
                found[str(path.relative_to(ROOT))] = hits
    assert not found, f"Redis keys formatted outside generative_service/keys.py: {found}"


def test_the_grep_catches_keys_and_spares_other_strings():
    caught = [
        'key = f"{self.prefix}:job:{job_id}"',
        'raw = redis.get(f"{settings.key_prefix}:models")',
        'key = f"{settings.key_prefix}:{queue}"',
        'name = f"{Queue.redis_queue_namespace_prefix}{rq_prefix}{name}"',
        'lock = "gensvc:maintenance:" + queue',
        'lock = prefix + ":running"',
        'KEY = "rq:queue:gensvc:default"',
        "wake = f\"{key.partition(':events:')[0]}:hub:{token}\"",
    ]
    spared = [
        'error = ValueError(f"{field}: {reason}")',
        'message = f"{prefix}: {reason}"',
        'url = f"{self.scheme}://{host}:{self.port}{self.target}"',
        'log.info("job.submitted", extra={"job_id": record.id})',
        'error = NotFound(f"job {job_id!r} not found")',
        "fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{index}.')",
        'headers = {"Authorization": f"Bearer {api_key}"}',
        'def f():\n    """Reads the `P:worker:{id}` keys."""',
    ]
    assert [line for line in caught if not offending_strings(line)] == []
    assert [line for line in spared if offending_strings(line)] == []


def test_key_names_and_lifetimes():
    keys = Keys("p")
    assert keys.job("job_1") == "p:job:job_1"
    assert keys.events("job_1") == "p:events:job_1"
    assert keys.idempotency("key_a", "k1") == "p:idem:key_a:k1"
    assert keys.rq_queue_list("large") == Queue("p:large", connection=Redis()).key
    assert RQ_QUEUE_NAMESPACE == Queue.redis_queue_namespace_prefix
    assert keys.logical_queue("rq:queue:p:large") == keys.logical_queue("p:large") == "large"
    assert keys.logical_queue("rq:queue:other:large") is None
    assert keys.worker_id(keys.worker("w-1")) == "w-1"
    assert Keys.of_events_key(keys.events("job_1")).hub_wake("t") == "p:hub:t"
    settings = Settings(key_prefix="p", retention_s=3600, webhook_progress_interval_s=0.5)
    assert settings.keys.models == "p:models"
    assert Ttl.events(settings) == 2 * 3600
    assert Ttl.webhook_throttle_ms(settings) == 500


def test_purge_deletes_a_prefix_and_its_rq_keys_only(redis, make_settings):
    settings, other = make_settings(), make_settings()
    keys = settings.keys
    redis.set(keys.job("job_1"), "{}")
    redis.set("rq:job:job_1", "x")
    redis.rpush(keys.rq_queue_list("default"), "job_1")
    redis.sadd("rq:queues", keys.rq_queue_list("default"))
    redis.set(other.keys.models, "{}")
    keys.purge(redis)
    assert not redis.exists(keys.job("job_1"), "rq:job:job_1", keys.rq_queue_list("default"))
    assert keys.rq_queue_list("default").encode() not in redis.smembers("rq:queues")
    assert redis.get(other.keys.models) == b"{}"
