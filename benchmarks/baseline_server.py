"""The baseline: a plain diffusers pipeline behind FastAPI, as a user writes it in an afternoon.

No queue, no batching, no SSE, no safety filter: `POST /generate {"prompt", "width", "height",
"steps", "seed"}` runs the pipeline in FastAPI's thread pool (one pipeline shared by all threads,
behind a lock, since a diffusers pipeline is not safe to call from two threads at once) and
answers the PNG. bench_baseline.py measures it side by side with the service.

    python benchmarks/baseline_server.py --model generative_service/models/demo/pipeline --port 8100
"""

from __future__ import annotations

import argparse
import io
import threading

import torch
import uvicorn
from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline
from fastapi import FastAPI, Response
from pydantic import BaseModel


class GenerateRequest(BaseModel):
    prompt: str
    width: int = 64
    height: int = 64
    steps: int = 20
    seed: int = 0
    guidance_scale: float = 5.0


def create_app(model: str) -> FastAPI:
    pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True
    )
    pipe.set_progress_bar_config(disable=True)
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/generate")
    def generate(body: GenerateRequest) -> Response:
        generator = torch.Generator().manual_seed(body.seed)
        with lock, torch.inference_mode():
            image = pipe(
                body.prompt,
                width=body.width,
                height=body.height,
                num_inference_steps=body.steps,
                guidance_scale=body.guidance_scale,
                generator=generator,
            ).images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0 = torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
