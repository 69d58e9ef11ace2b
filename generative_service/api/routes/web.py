"""The browser pages: the playground (`/`, `/playground`) and the A/B rating page (`/eval`).

Plain HTML, CSS and JavaScript modules shipped as package data (generative_service/web) and
served from `/static`; nothing comes from a CDN and there is no build step. The pages use only
the public API, with the key a user types into the page (kept in the browser's localStorage and
sent as `Authorization: Bearer`; event streams are read with fetch so the key never goes into a
URL).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/playground", status_code=307)


@router.get("/playground")
def playground() -> FileResponse:
    return FileResponse(WEB_DIR / "playground.html", headers={"Cache-Control": "no-cache"})


@router.get("/eval")
def eval_page() -> FileResponse:
    return FileResponse(WEB_DIR / "eval.html", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
