"""Export the API documents: openapi/openapi.json, openapi/postman_collection.json, docs/configuration.md.

    python -m generative_service.openapi_export           # rewrite all three (`make openapi`)
    python -m generative_service.openapi_export --check   # exit 1 if any committed file drifted

The OpenAPI document comes from `create_app().openapi()`, built with default Settings (GENSVC_*
variables of the caller's shell are ignored), so the output depends on the code only. The Postman
collection (v2.1) is generated from that document: one folder per tag, one request per operation,
bodies filled with the documented examples. Its first folder, "Walkthrough", is what `make
postman` runs with newman against a live service: the requests of WALKTHROUGH in a working order
(models, submit, get, list, events, wait for success, download, webhook log, LoRAs: list, upload a
real adapter both ways, read, delete only those two; then submit and cancel a second job), each
with `pm.test` assertions on status and shape. The uploads send `walkthrough-lora.safetensors`
from newman's working directory: scripts/postman points it at openapi/loras/MODEL/, the adapter
for the model the service reports (`scripts/walkthrough-lora MODEL` writes one). The other folders
are the reference: one request per operation, not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from generative_service import config_doc, rules

OPENAPI_PATH = Path("openapi/openapi.json")
POSTMAN_PATH = Path("openapi/postman_collection.json")
# Resolved from newman's --working-dir: scripts/postman passes openapi/loras/<served model>/.
LORA_FILE = "walkthrough-lora.safetensors"
POSTMAN_SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
# Path parameters become collection variables so requests chain (submit, then get/cancel/...).
PATH_VARIABLES = {
    "job_id": "{{jobId}}",
    "name": "{{loraName}}",
    "index": "0",
    "study_id": "{{studyId}}",
    "pair_id": "{{pairId}}",
    "side": "left",
    "model": "{{modelId}}",
}
METHODS = ("get", "post", "put", "patch", "delete")
# Values for parameters the document gives no example for ({{$guid}} is Postman's random UUID).
PARAM_HINTS = {"idempotency-key": "{{$guid}}", "prefer": "wait=30", "last-event-id": "0-0"}


@contextlib.contextmanager
def _without_gensvc_env() -> Iterator[None]:
    """Hide GENSVC_* variables so the document never depends on who exported it."""
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("GENSVC_")}
    try:
        yield
    finally:
        os.environ.update(saved)


def build_openapi() -> dict:
    """The app's OpenAPI document, from default Settings."""
    from generative_service.api import create_app
    from generative_service.settings import Settings

    with _without_gensvc_env(), tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(storage_dir=Path(tmp) / "images", cache_dir=Path(tmp) / "cache"))
        return app.openapi()


# --- examples ------------------------------------------------------------------------------------
def resolve(spec: dict, node: dict) -> dict:
    """Follow a local `$ref` (and a single-item allOf/anyOf wrapper around one)."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def media_example(spec: dict, media: dict) -> Any:
    """The documented example of a media type: `example`, else the first `examples`, else the schema's."""
    if "example" in media:
        return media["example"]
    if media.get("examples"):
        first = next(iter(media["examples"].values()))
        return resolve(spec, first).get("value")
    return schema_example(spec, media.get("schema", {}))


def documented(spec: dict, media: dict, *, success: bool) -> bool:
    """True when the media type (or, for a 2xx answer, its schema) carries a written example."""
    if "example" in media or media.get("examples"):
        return True
    schema = resolve(spec, media.get("schema", {}))
    return success and ("example" in schema or bool(schema.get("examples")))


def schema_example(spec: dict, schema: dict, depth: int = 0) -> Any:
    """An example for `schema`: its own example(s), else one built from defaults and required fields."""
    schema = resolve(spec, schema)
    if "example" in schema:
        return schema["example"]
    if schema.get("examples"):
        return schema["examples"][0]
    if "default" in schema:
        return schema["default"]
    if depth > 4:
        return None
    for key in ("allOf", "anyOf", "oneOf"):
        options = [o for o in schema.get(key, []) if resolve(spec, o).get("type") != "null"]
        if options:
            return schema_example(spec, options[0], depth + 1)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        required = schema.get("required", [])
        return {
            name: schema_example(spec, prop, depth + 1)
            for name, prop in schema.get("properties", {}).items()
            if name in required
        }
    if kind == "array":
        return [schema_example(spec, schema.get("items", {}), depth + 1)]
    if "enum" in schema:
        return schema["enum"][0]
    if not isinstance(kind, str):
        return None
    return {"string": "string", "integer": 0, "number": 0.0, "boolean": False}.get(kind)


# --- Postman -------------------------------------------------------------------------------------
def build_postman(spec: dict) -> dict:
    """A Postman v2.1 collection with one folder per tag, from an OpenAPI document."""
    folders: dict[str, list[dict]] = {tag["name"]: [] for tag in spec.get("tags", [])}
    for path, operations in spec["paths"].items():
        for method in METHODS:
            if method in operations:
                operation = operations[method]
                tag = (operation.get("tags") or ["other"])[0]
                folders.setdefault(tag, []).append(postman_item(spec, path, method, operation))
    tag_text = {tag["name"]: tag.get("description", "") for tag in spec.get("tags", [])}
    return {
        "info": {
            "name": spec["info"]["title"],
            "description": spec["info"].get("description", ""),
            "version": spec["info"]["version"],
            "schema": POSTMAN_SCHEMA,
        },
        "auth": {
            "type": "bearer",
            "bearer": [{"key": "token", "value": "{{apiKey}}", "type": "string"}],
        },
        "variable": [
            {"key": "baseUrl", "value": "http://localhost:8000", "type": "string"},
            {
                "key": "apiKey",
                "value": "",
                "type": "string",
                "description": "One of GENSVC_API_KEYS; leave empty when the server has none.",
            },
            {
                "key": "jobId",
                "value": "",
                "type": "string",
                "description": "Set by the test script of 'Submit a generation job'.",
            },
            {"key": "loraName", "value": lora_example_name(spec), "type": "string"},
            {
                "key": "loraBytesName",
                "value": lora_example_name(spec) + "-bytes",
                "type": "string",
                "description": "Walkthrough: the adapter it uploads as raw bytes.",
            },
            {
                "key": "defaultSteps",
                "value": "",
                "type": "string",
                "description": "Set by 'Models served'.",
            },
            {
                "key": "modelId",
                "value": "tiny",
                "type": "string",
                "description": "The served model (GET /openai/v1/models).",
            },
        ],
        "item": [
            {
                "name": "Walkthrough",
                "description": "Run in order (`make postman`): each request asserts its answer.",
                "item": walkthrough(spec),
            },
            *(
                {"name": tag, "description": tag_text.get(tag, ""), "item": items}
                for tag, items in folders.items()
                if items
            ),
        ],
    }


# --- the walkthrough -----------------------------------------------------------------------------
# (request name, operationId, body override or None, pre-request script, test script). Scripts are
# Postman's JavaScript; `v(name)` reads and `set(name, value)` writes a collection variable.
_JS_HELPERS = [
    "const v = (k) => pm.collectionVariables.get(k);",
    "const set = (k, x) => pm.collectionVariables.set(k, x);",
]
_TERMINAL = "['succeeded', 'failed', 'canceled']"
WALKTHROUGH: list[tuple[str, str, Any, list[str], list[str]]] = [
    ("Models served", "getModels", None, [], [
        "pm.test('200 with the served model', () => {",
        "  pm.response.to.have.status(200);",
        "  const m = pm.response.json();",
        "  pm.expect(m.base_model).to.be.a('string');",
        "  pm.expect(m.default_steps).to.be.a('number');",
        "  pm.expect(m.samplers).to.be.an('array').that.is.not.empty;",
        "  set('modelId', m.base_model); set('defaultSteps', m.default_steps);",
        "});",
    ]),
    ("Submit a job (no steps: the model's default)", "submitJob",
     {"prompt": "a red square", "seed": 7, "metadata": {"from": "postman"}}, [], [
        "pm.test('202 queued, with an id, a Location and a queue position', () => {",
        "  pm.response.to.have.status(202);",
        "  const job = pm.response.json();",
        "  pm.expect(job.id).to.match(/^job_/);",
        "  pm.expect(pm.response.headers.get('Location')).to.eql('/v1/jobs/' + job.id);",
        "  pm.expect(job.request.steps).to.eql(Number(v('defaultSteps')));",
        "  if (job.status === 'queued') pm.expect(job.queue_position).to.be.a('number');",
        "  set('jobId', job.id);",
        "});",
    ]),
    ("Get the job", "getJob", None, [], [
        "pm.test('200, the same job', () => {",
        "  pm.response.to.have.status(200);",
        "  const job = pm.response.json();",
        "  pm.expect(job.id).to.eql(v('jobId'));",
        "  pm.expect(job.links.events).to.eql('/v1/jobs/' + job.id + '/events');",
        "});",
    ]),
    ("List my jobs", "listJobs", None, [], [
        "pm.test('200, the job is listed', () => {",
        "  pm.response.to.have.status(200);",
        "  pm.expect(pm.response.json().data.map((j) => j.id)).to.include(v('jobId'));",
        "});",
    ]),
    ("Stream the job's events (to its end)", "streamJobEvents", None, [], [
        "pm.test('200 text/event-stream ending with the terminal event', () => {",
        "  pm.response.to.have.status(200);",
        "  pm.expect(pm.response.headers.get('Content-Type')).to.include('text/event-stream');",
        "  const text = pm.response.text();",
        "  pm.expect(text).to.include('event: progress');",
        "  pm.expect(text).to.match(/event: (succeeded|failed|canceled)/);",
        "});",
    ]),
    ("Wait for success", "getJob", None, [], [
        "const job = pm.response.json();",
        f"if (!{_TERMINAL}.includes(job.status) && Number(v('polls') || 0) < 600) {{",
        "  set('polls', Number(v('polls') || 0) + 1);",
        "  setTimeout(() => {}, 1000);",
        "  postman.setNextRequest(pm.info.requestName);",
        "} else {",
        "  pm.test('succeeded with an image after the advertised default steps', () => {",
        "    pm.response.to.have.status(200);",
        "    pm.expect(job.status).to.eql('succeeded');",
        "    pm.expect(job.images).to.have.lengthOf(1);",
        "    pm.expect(job.progress.total_steps).to.eql(Number(v('defaultSteps')));",
        "  });",
        "}",
    ]),
    ("Download the image", "getJobImage", None, [], [
        "pm.test('200 image/png', () => {",
        "  pm.response.to.have.status(200);",
        "  pm.expect(pm.response.headers.get('Content-Type')).to.include('image/png');",
        "  pm.expect(pm.response.size().body).to.be.above(100);",
        "});",
    ]),
    ("Webhook delivery log", "listWebhookAttempts", None, [], [
        "pm.test('200 with a list of attempts', () => {",
        "  pm.response.to.have.status(200);",
        "  pm.expect(pm.response.json().data).to.be.an('array');",
        "});",
    ]),
    ("List LoRA adapters", "listLoras", None, [
        "set('loraName', 'postman-' + Date.now());",
        "set('loraBytesName', v('loraName') + '-bytes');",
    ], [
        "pm.test('200 with a list of adapters', () => {",
        "  pm.response.to.have.status(200);",
        "  pm.expect(pm.response.json().data).to.be.an('array');",
        "});",
    ]),
    ("Upload a LoRA (multipart)", "uploadLora", "multipart", [], [
        "pm.test('201 with name, size and sha256', () => {",
        "  pm.response.to.have.status(201);",
        "  const lora = pm.response.json();",
        "  pm.expect(lora.name).to.eql(v('loraName'));",
        "  pm.expect(lora.size_bytes).to.be.above(0);",
        "  pm.expect(lora.sha256).to.match(/^[0-9a-f]{64}$/);",
        "});",
    ]),
    ("Upload a LoRA (raw bytes)", "uploadLoraBytes", "bytes", [], [
        "pm.test('201 under the name in the path', () => {",
        "  pm.response.to.have.status(201);",
        "  pm.expect(pm.response.json().name).to.eql(v('loraBytesName'));",
        "});",
    ]),
    ("Get the uploaded LoRA", "getLora", None, [], [
        "pm.test('200, the adapter uploaded above', () => {",
        "  pm.response.to.have.status(200);",
        "  pm.expect(pm.response.json().name).to.eql(v('loraName'));",
        "});",
    ]),
    ("Delete the LoRA uploaded above", "deleteLora", None, [], [
        "pm.test('204', () => pm.response.to.have.status(204));",
    ]),
    ("Delete the other uploaded LoRA", "deleteLora", "bytesName", [], [
        "pm.test('204', () => pm.response.to.have.status(204));",
    ]),
    ("Submit a second job", "submitJob",
     {"prompt": "a blue circle", "steps": rules.MAX_STEPS, "seed": 8}, [], [
        "pm.test('202 with an id', () => {",
        "  pm.response.to.have.status(202);",
        "  set('jobId', pm.response.json().id);",
        "});",
    ]),
    ("Cancel the second job", "cancelJob", None, [], [
        "pm.test('200 canceled or 202 canceling, the same job', () => {",
        "  pm.expect(pm.response.code).to.be.oneOf([200, 202]);",
        "  const job = pm.response.json();",
        "  pm.expect(job.id).to.eql(v('jobId'));",
        f"  if (pm.response.code === 200) pm.expect({_TERMINAL}).to.include(job.status);",
        "});",
    ]),
]  # fmt: skip


def walkthrough(spec: dict) -> list[dict]:
    """The WALKTHROUGH requests, built from their operations, with their scripts."""
    operations = {
        operation["operationId"]: (path, method, operation)
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
        if method in METHODS
    }
    items = []
    for name, operation_id, body, prerequest, test in WALKTHROUGH:
        path, method, operation = operations[operation_id]
        request = postman_request(spec, path, method, operation)
        request["header"] = [h for h in request["header"] if h["key"] == "Content-Type"]
        if isinstance(body, dict):
            request["body"] = {
                "mode": "raw",
                "raw": json.dumps(body, indent=2),
                "options": {"raw": {"language": "json"}},
            }
        elif body == "multipart":
            request["body"] = {
                "mode": "formdata",
                "formdata": [
                    {"key": "file", "type": "file", "src": LORA_FILE},
                    {"key": "name", "type": "text", "value": "{{loraName}}"},
                ],
            }
        elif body in ("bytes", "bytesName"):
            request["url"] = {
                **request["url"],
                "raw": request["url"]["raw"].replace("{{loraName}}", "{{loraBytesName}}"),
                "path": [
                    s.replace("{{loraName}}", "{{loraBytesName}}") for s in request["url"]["path"]
                ],
            }
            if body == "bytes":
                request["body"] = {"mode": "file", "file": {"src": LORA_FILE}}
        events = [("prerequest", prerequest), ("test", test)]
        items.append(
            {
                "name": name,
                "event": [
                    {
                        "listen": listen,
                        "script": {"type": "text/javascript", "exec": _JS_HELPERS + lines},
                    }
                    for listen, lines in events
                    if lines
                ],
                "request": request,
                "response": [],
            }
        )
    return items


def lora_example_name(spec: dict) -> str:
    """The adapter name the document's own LoRA example uses, so the requests agree with it."""
    schema = spec.get("components", {}).get("schemas", {}).get("LoraInfo", {})
    example = schema_example(spec, schema) if schema else None
    return example.get("name", "my-style") if isinstance(example, dict) else "my-style"


def postman_item(spec: dict, path: str, method: str, operation: dict) -> dict:
    """One request (with its documented example responses)."""
    request = postman_request(spec, path, method, operation)
    item: dict[str, Any] = {
        "name": operation.get("summary") or operation["operationId"],
        "request": request,
        "response": [],
    }
    for code, response in operation.get("responses", {}).items():
        media = resolve(spec, response).get("content", {}).get("application/json")
        if media and documented(spec, media, success=code.startswith("2")):
            item["response"].append(
                {
                    "name": f"{code} {response.get('description', '')}".strip(),
                    "originalRequest": request,
                    "code": int(code),
                    "status": response.get("description", ""),
                    "header": [{"key": "Content-Type", "value": "application/json"}],
                    "_postman_previewlanguage": "json",
                    "body": json.dumps(media_example(spec, media), indent=2),
                }
            )
    if method == "post" and path == "/v1/jobs":
        item["event"] = [
            {
                "listen": "test",
                "script": {
                    "type": "text/javascript",
                    "exec": [
                        "if (pm.response.code < 300) {",
                        "  pm.collectionVariables.set('jobId', pm.response.json().id);",
                        "}",
                    ],
                },
            }
        ]
    return item


def param_value(spec: dict, param: dict) -> str:
    """A query/header parameter's documented example or default, else a useful hint, else ""."""
    schema = resolve(spec, param.get("schema", {}))
    for source in (param, schema):
        if "example" in source:
            return _text(source["example"])
        if source.get("examples") and isinstance(source["examples"], list):
            return _text(source["examples"][0])
    if schema.get("default") is not None:
        return _text(schema["default"])
    options = [resolve(spec, o) for o in schema.get("anyOf", [])]
    enums = [value for option in options for value in option.get("enum", [])] + schema.get(
        "enum", []
    )
    if enums:
        return _text(enums[0])
    return PARAM_HINTS.get(param["name"].lower(), "")


def postman_request(spec: dict, path: str, method: str, operation: dict) -> dict:
    params = [resolve(spec, p) for p in operation.get("parameters", [])]
    segments = [
        PATH_VARIABLES.get(s[1:-1], f":{s[1:-1]}") if s.startswith("{") else s
        for s in path.strip("/").split("/")
    ]
    query = [
        {
            "key": p["name"],
            "value": param_value(spec, p),
            "description": p.get("description", ""),
            "disabled": not p.get("required", False),
        }
        for p in params
        if p["in"] == "query"
    ]
    headers = [
        {
            "key": p["name"],
            "value": param_value(spec, p),
            "description": p.get("description", ""),
            "disabled": not p.get("required", False),
        }
        for p in params
        if p["in"] == "header"
    ]
    url: dict[str, Any] = {
        "raw": "{{baseUrl}}/" + "/".join(segments),
        "host": ["{{baseUrl}}"],
        "path": segments,
    }
    if query:
        url["query"] = query
        url["raw"] += "?" + "&".join(f"{q['key']}={q['value']}" for q in query if not q["disabled"])
        url["raw"] = url["raw"].rstrip("?")
    request: dict[str, Any] = {
        "method": method.upper(),
        "header": headers,
        "url": url,
        "description": operation.get("description", ""),
    }
    body = postman_body(spec, operation.get("requestBody"))
    if body is not None:
        mode, payload, content_type = body
        request["body"] = {"mode": mode, mode: payload}
        if mode == "raw":
            request["body"]["options"] = {"raw": {"language": "json"}}
        if content_type:
            request["header"] = [{"key": "Content-Type", "value": content_type}, *headers]
    return request


def postman_body(spec: dict, request_body: dict | None) -> tuple[str, Any, str | None] | None:
    """(Postman body mode, payload, Content-Type header) for an OpenAPI requestBody."""
    if not request_body:
        return None
    content = resolve(spec, request_body).get("content", {})
    if "application/json" in content:
        return (
            "raw",
            json.dumps(media_example(spec, content["application/json"]), indent=2),
            "application/json",
        )
    if "multipart/form-data" in content:
        schema = resolve(spec, content["multipart/form-data"].get("schema", {}))
        fields = []
        for name, prop in schema.get("properties", {}).items():
            prop = resolve(spec, prop)
            is_file = (
                prop.get("format") == "binary"
                or prop.get("contentMediaType") == "application/octet-stream"
            )
            fields.append(
                {"key": name, "type": "file", "src": []}
                if is_file
                else {"key": name, "type": "text", "value": _text(schema_example(spec, prop))}
            )
        return "formdata", fields, None
    media_type = next(iter(content), "application/octet-stream")
    return "file", {"src": ""}, media_type


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


# --- files ---------------------------------------------------------------------------------------
def render_all() -> dict[Path, str]:
    """Every generated document, path -> text."""
    spec = build_openapi()
    return {
        OPENAPI_PATH: json.dumps(spec, indent=2, ensure_ascii=False) + "\n",
        POSTMAN_PATH: json.dumps(build_postman(spec), indent=2, ensure_ascii=False) + "\n",
        config_doc.DOC_PATH: config_doc.render(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m generative_service.openapi_export",
        description="Write the OpenAPI document, the Postman collection and the configuration reference.",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a committed document differs from the code"
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in render_all().items():
        path = args.root / relative
        current = path.read_text() if path.exists() else None
        if args.check:
            if current != text:
                stale.append(str(relative))
        elif current != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {relative}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run `make openapi`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
