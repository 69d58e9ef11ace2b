"""The `gensvc` command: run the service (`up`, `api`, `worker`, `webhook-worker`), use it
(`generate`, `demo`) and build models (`models build-tiny`, `models train-demo`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from generative_service.client import DEFAULT_URL

DEMO_PROMPT = "a red circle above a blue square"


def _exec_module(module: str, args: list[str]) -> int:
    """Replace this process with `python -m module args` (offline model hub unless set)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = [sys.executable, "-m", module, *args]
    os.execv(sys.executable, argv)
    return 0  # not reached


def server_stack() -> dict[str, str]:
    """The event loop, HTTP parser and Redis reply parser the gateway runs: the C ones
    (uvloop, httptools, hiredis: dependencies) unless they cannot be imported, in which case
    uvicorn and redis-py fall back to pure Python without a word, at several times the CPU."""
    import importlib

    from redis.utils import HIREDIS_AVAILABLE

    def found(module: str) -> bool:
        try:
            importlib.import_module(module)
        except ImportError:
            return False
        return True

    return {
        "loop": "uvloop" if found("uvloop") else "asyncio",
        "http": "httptools" if found("httptools") else "h11",
        "redis_parser": "hiredis" if HIREDIS_AVAILABLE else "python",
    }


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from generative_service import logs
    from generative_service.settings import get_settings

    logs.configure(get_settings(), "gateway")
    stack = server_stack()
    log = logs.get_logger("generative_service.gateway")
    log.info("gateway.server", extra={**stack, "workers": args.workers})
    if stack != {"loop": "uvloop", "http": "httptools", "redis_parser": "hiredis"}:
        log.warning(
            "gateway.pure_python_fallback",
            extra={**stack, "fix": "pip install 'uvicorn[standard]' 'redis[hiredis]'"},
        )
    uvicorn.run("generative_service.api:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                loop=stack["loop"], http=stack["http"], log_config=None, timeout_graceful_shutdown=5,
                server_header=False)  # fmt: skip
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from generative_service.cli.supervisor import run_up

    return run_up(host=args.host, port=args.port, workers=args.workers)


def cmd_generate(args: argparse.Namespace) -> int:
    from generative_service.cli.generate import run_generate

    return run_generate(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from generative_service.cli.demo import run_demo

    return run_demo(args)


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from generative_service.engine.tiny import build_tiny

    build_tiny(Path(args.dir))
    print(args.dir)
    return 0


def cmd_train_demo(args: argparse.Namespace) -> int:
    from generative_service.training.demo import main as train_main

    return int(train_main(args.rest) or 0)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from generative_service.cli.generate import parse_lora, parse_size

    p = sub.add_parser("generate", help="submit a prompt, show progress, save the image(s)")
    p.add_argument("prompt")
    p.add_argument(
        "--out", "-o", required=True, help="output file; several images get -0, -1... suffixes"
    )
    p.add_argument("--negative", help="negative prompt")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--guidance", type=float, help="guidance scale")
    p.add_argument("--sampler")
    p.add_argument("--size", type=parse_size, help="WxH, e.g. 64x64")
    p.add_argument("--num-images", type=int)
    p.add_argument(
        "--lora", type=parse_lora, action="append", help="name or name:scale (repeatable)"
    )
    p.add_argument(
        "--control-type", help="a ControlNet the server lists in /v1/models (e.g. canny, depth)"
    )
    p.add_argument("--control-image", help="image file for the ControlNet")
    p.add_argument("--control-scale", type=float, help="ControlNet conditioning scale")
    p.add_argument("--upscale", type=int, choices=(2, 4))
    p.add_argument("--format", choices=("png", "jpeg", "webp"))
    p.add_argument(
        "--url",
        default=client_url(),
        help=f"gateway URL (default: GENSVC_URL, else {DEFAULT_URL})",
    )
    p.add_argument("--api-key", help="Bearer API key, when the server has GENSVC_API_KEYS")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)


def client_url() -> str:
    """The gateway the client commands talk to: GENSVC_URL, else the local default."""
    from generative_service.settings import get_settings

    try:
        return get_settings().url or DEFAULT_URL
    except ValueError:  # a server setting is broken: the client still works
        return DEFAULT_URL


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("generative-service")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gensvc", description="Self-hosted asynchronous text-to-image service."
    )
    parser.add_argument("--version", action="version", version=f"gensvc {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "up", help="Redis (if none answers) + gateway + GPU worker(s) + webhook worker, supervised"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="GPU worker processes (one per GPU)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("api", help="run the gateway (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=cmd_api)

    for name, module, text in (
        ("worker", "workers.gpu_worker", "run a GPU worker"),
        ("webhook-worker", "workers.webhook_worker", "run the webhook sender"),
    ):
        p = sub.add_parser(name, help=f"{text} (extra arguments go to `python -m {module}`)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda args, module=module: _exec_module(module, args.rest))

    _add_generate(sub)

    p = sub.add_parser(
        "demo", help="start everything on the embedded model, generate one image, stop"
    )
    p.add_argument("--out", "-o", default="demo.png")
    p.add_argument("--prompt", default=DEMO_PROMPT)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--steps", type=int)
    p.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    p.add_argument(
        "--log-file", help="where the service's JSON logs go (default: OUT with .log, demo.log)"
    )
    p.add_argument(
        "--ready-timeout", type=float, default=900.0, help="seconds to wait for a worker"
    )
    p.set_defaults(func=cmd_demo)

    models = sub.add_parser(
        "models", help="build or train the small built-in models"
    ).add_subparsers(dest="models_command", required=True)
    p = models.add_parser("build-tiny", help="build the tiny random-weight SDXL bundle into DIR")
    p.add_argument("dir")
    p.set_defaults(func=cmd_build_tiny)
    p = models.add_parser(
        "train-demo",
        help="train the embedded demo model (shapes; --world digits: the earlier digits recipe); "
        "arguments go to the trainer",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train_demo)
    return parser


PASSTHROUGH = {("worker",): "workers.gpu_worker", ("webhook-worker",): "workers.webhook_worker"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `gensvc`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Commands that hand their arguments to another program take them verbatim (argparse would
    # try to parse options such as `--queues` itself).
    if argv and argv[0] in ("worker", "webhook-worker") and not {"-h", "--help"} & set(argv[1:2]):
        return _exec_module(PASSTHROUGH[(argv[0],)], argv[1:])
    if argv[:2] == ["models", "train-demo"]:
        return cmd_train_demo(argparse.Namespace(rest=argv[2:]))
    args = build_parser().parse_args(argv)
    return args.func(args)
