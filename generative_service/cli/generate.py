"""`gensvc generate`: submit, follow over SSE with a progress display, save the images."""

from __future__ import annotations

import argparse
import base64
import mimetypes
import sys
from pathlib import Path

import httpx

from generative_service.cli.progress import ProgressDisplay
from generative_service.client import APIError, Client


def parse_size(value: str) -> tuple[int, int]:
    """`WxH` -> (W, H)."""
    width, sep, height = value.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"size must look like 512x512, got {value!r}")
    return int(width), int(height)


def parse_lora(value: str) -> dict:
    """`name` or `name:scale` -> {"name", "scale"}."""
    name, _, scale = value.partition(":")
    try:
        return {"name": name, "scale": float(scale) if scale else 1.0}
    except ValueError:
        raise argparse.ArgumentTypeError(f"LoRA must look like name:0.8, got {value!r}") from None


def image_data_url(path: str) -> str:
    kind = mimetypes.guess_type(path)[0] or "image/png"
    return f"data:{kind};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def request_from_args(args: argparse.Namespace) -> dict:
    """The POST /v1/jobs body for the generate options (unset options are left to the server)."""
    body: dict = {"prompt": args.prompt}
    optional = {"negative_prompt": args.negative, "steps": args.steps, "seed": args.seed, "guidance_scale": args.guidance,
                "sampler": args.sampler, "num_images": args.num_images, "upscale": args.upscale, "output_format": args.format}  # fmt: skip
    body.update({key: value for key, value in optional.items() if value is not None})
    if args.size:
        body["width"], body["height"] = args.size
    if args.lora:
        body["loras"] = args.lora
    if args.control_type or args.control_image:
        if not (args.control_type and args.control_image):
            raise SystemExit("--control-type and --control-image go together")
        body["control"] = {"type": args.control_type, "image": image_data_url(args.control_image)}
        if args.control_scale is not None:
            body["control"]["conditioning_scale"] = args.control_scale
    return body


def follow(client: Client, job_id: str, *, quiet: bool = False) -> None:
    """Show the job's progress (a bar on a terminal, state lines elsewhere) until it ends."""
    display = ProgressDisplay(sys.stderr, quiet=quiet)
    try:
        for _, event in client.events(job_id):
            display.update(event)
            if event.is_terminal:
                break
    finally:
        display.close()


def generate(
    url: str, body: dict, out: str, *, api_key: str | None = None, quiet: bool = False
) -> int:
    """Submit `body`, follow it, save the image(s) to `out`. Returns the exit code."""
    try:
        return _generate(url, body, out, api_key=api_key, quiet=quiet)
    except httpx.TransportError as exc:
        print(
            f"error: cannot reach the service at {url} ({type(exc).__name__}); start it with "
            "`gensvc up`, or point GENSVC_URL / --url at a running gateway",
            file=sys.stderr,
        )
        return 1


def _check_control_type(client: Client, body: dict) -> str | None:
    """The reason `body`'s control type cannot run here (the server lists its ControlNets)."""
    control = body.get("control")
    if not control:
        return None
    served = client.models().get("controlnets") or []
    names = [item if isinstance(item, str) else str(item.get("type")) for item in served]
    if control["type"] in names:
        return None
    return f"--control-type {control['type']} is not served here; choose from: {', '.join(names) or 'none'}"


def _generate(url: str, body: dict, out: str, *, api_key: str | None, quiet: bool) -> int:
    with Client(url, api_key=api_key) as client:
        try:
            refused = _check_control_type(client, body)
            if refused:
                print(f"error: {refused}", file=sys.stderr)
                return 2
            job = client.submit(body)
        except APIError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        print(f"job {job.id} (seed {job.request.seed})", file=sys.stderr)
        try:
            follow(client, job.id, quiet=quiet)
        except KeyboardInterrupt:
            client.cancel(job.id)
            print(f"\ncanceled job {job.id}", file=sys.stderr)
            return 130
        job = client.get(job.id)
        if job.status.value != "succeeded":
            reason = job.error.message if job.error else job.status.value
            print(f"job {job.id} {job.status.value}: {reason}", file=sys.stderr)
            return 1
        for path in client.save_images(job, out):
            print(path)
        blocked = [image.index for image in job.images if image.url is None]
        if blocked:
            print(f"images {blocked} were blocked by the safety filter", file=sys.stderr)
        return 0


def run_generate(args: argparse.Namespace) -> int:
    return generate(
        args.url, request_from_args(args), args.out, api_key=args.api_key, quiet=args.quiet
    )
