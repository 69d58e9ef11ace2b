"""Export the API documents: openapi/openapi.json, openapi/postman_collection.json, docs/configuration.md.

    python -m generative_service.openapi_export           # rewrite all three (`make openapi`)
    python -m generative_service.openapi_export --check   # exit 1 if any committed file drifted

The OpenAPI document comes from `create_app().openapi()`, built with default Settings (GENSVC_*
variables of the caller's shell are ignored), so the output depends on the code only. The Postman
collection (v2.1) is generated from that document: one folder per tag, one request per operation,
bodies filled with the documented examples, and a test script on "Submit" that stores the new
job's id in the `jobId` collection variable for the requests that follow.
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

from generative_service import config_doc

OPENAPI_PATH = Path("openapi/openapi.json")
POSTMAN_PATH = Path("openapi/postman_collection.json")
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
                "key": "modelId",
                "value": "tiny",
                "type": "string",
                "description": "The served model (GET /openai/v1/models).",
            },
        ],
        "item": [
            {"name": tag, "description": tag_text.get(tag, ""), "item": items}
            for tag, items in folders.items()
            if items
        ],
    }


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
