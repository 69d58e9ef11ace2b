"""/v1/evals: A/B evaluation studies, the blind pairs raters see, their votes and the results."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from generative_service.api.deps import AsyncRedisDep, OwnerDep, SettingsDep, StorageDep
from generative_service.api.responses import error_responses
from generative_service.errors import Conflict, NotFound
from generative_service.evals import results, study
from generative_service.evals.schemas import (
    RATER_PATTERN,
    NextPair,
    PairSide,
    StudyCreate,
    StudyList,
    StudyResource,
    StudyStatus,
    VoteCreate,
    VoteResource,
)
from generative_service.evals.store import EvalStore

router = APIRouter(prefix="/v1/evals", tags=["evals"])

StudyId = Annotated[
    str, Path(description="Study id, e.g. `eval_0123456789abcdef0123`.", max_length=64)
]
Rater = Annotated[
    str | None,
    Query(min_length=1, max_length=64, pattern=RATER_PATTERN, description="The rater's name; default: the caller's key id."),
]  # fmt: skip


async def get_evals(request: Request, aredis: AsyncRedisDep) -> EvalStore:
    state = request.app.state
    return EvalStore(state.redis, aredis, state.settings, state.store)


EvalsDep = Annotated[EvalStore, Depends(get_evals)]


async def _study(evals: EvalStore, study_id: str, owner: str) -> study.StudyRecord:
    """The caller's study, its images brought up to date (and more of them submitted)."""
    return await evals.refresh(await run_in_threadpool(evals.get, study_id, owner=owner))


@router.post(
    "",
    status_code=201,
    response_model=StudyResource,
    summary="Create a study (its images are generated through the job queue)",
    responses=error_responses(401, 422, 503),
)
async def create_study(
    body: StudyCreate, response: Response, evals: EvalsDep, settings: SettingsDep, owner: OwnerDep
) -> StudyResource:
    record = await evals.create(body, owner=owner)
    resource = await run_in_threadpool(evals.to_resource, record, base_url=settings.public_url)
    response.headers["Location"] = resource.links["self"]
    return resource


@router.get("", response_model=StudyList, summary="List your studies, newest first",
            responses=error_responses(401, 503))  # fmt: skip
def list_studies(evals: EvalsDep, settings: SettingsDep, owner: OwnerDep) -> StudyList:
    return StudyList(
        data=[evals.to_resource(r, base_url=settings.public_url) for r in evals.list(owner=owner)]
    )


@router.get("/{study_id}", response_model=StudyResource, summary="Get a study",
            responses=error_responses(401, 404, 503))  # fmt: skip
async def get_study(
    study_id: StudyId, evals: EvalsDep, settings: SettingsDep, owner: OwnerDep
) -> StudyResource:
    record = await _study(evals, study_id, owner)
    return await run_in_threadpool(evals.to_resource, record, base_url=settings.public_url)


@router.delete("/{study_id}", status_code=204, summary="Delete a study and its votes",
               responses=error_responses(401, 404, 503))  # fmt: skip
def delete_study(study_id: StudyId, evals: EvalsDep, owner: OwnerDep) -> Response:
    evals.delete(study_id, owner=owner)
    return Response(status_code=204)


@router.get(
    "/{study_id}/next",
    response_model=NextPair,
    summary="The next pair for a rater (blind, sides randomised)",
    responses=error_responses(401, 404, 422, 503),
)
async def next_pair(
    study_id: StudyId, evals: EvalsDep, settings: SettingsDep, owner: OwnerDep, rater: Rater = None
) -> NextPair:
    """The rater's next unanswered pair whose images exist; `pair_id` null while the rest generate."""
    rater = rater or owner
    record = await _study(evals, study_id, owner)
    answered = await run_in_threadpool(evals.answered, record, rater)
    open_pairs = [
        pair
        for pair in study.rater_order(record, rater)
        if pair.id not in answered and record.pair_state(pair) != "failed"
    ]
    status = StudyStatus.generating if record.generating else StudyStatus.ready
    ready = next((pair for pair in open_pairs if record.pair_state(pair) == "succeeded"), None)
    answer = NextPair(
        done=not open_pairs, status=status, answered=len(answered), remaining=len(open_pairs)
    )
    if ready is not None:
        root = f"{settings.public_url}/v1/evals/{record.id}/pairs/{ready.id}"
        query = f"?rater={rater}"
        answer.pair_id = ready.id
        answer.prompt = record.prompts[ready.prompt]
        answer.left = PairSide(image_url=f"{root}/left{query}")
        answer.right = PairSide(image_url=f"{root}/right{query}")
    return answer


@router.get(
    "/{study_id}/pairs/{pair_id}/{side}",
    summary="One image of a pair, as the rater sees it",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
               **error_responses(401, 404, 409, 422, 503)},
)  # fmt: skip
async def pair_image(
    study_id: StudyId,
    pair_id: Annotated[str, Path(max_length=64)],
    side: Literal["left", "right"],
    evals: EvalsDep,
    storage: StorageDep,
    owner: OwnerDep,
    rater: Rater = None,
) -> Response:
    rater = rater or owner
    record = await _study(evals, study_id, owner)
    pair = record.pair(pair_id)
    if pair is None:
        raise NotFound(f"pair {pair_id!r} not found in study {study_id}")
    if record.pair_state(pair) != "succeeded":
        raise Conflict(f"pair {pair_id} has no images yet")
    left, right = study.sides(record, rater, pair)
    item = record.item(left if side == "left" else right, pair.prompt, pair.seed)
    data, content_type = await run_in_threadpool(storage.get, item.job_id or "", 0)
    # NOTE: no caching by URL: the same URL shows another image to another rater's name.
    return Response(
        content=data, media_type=content_type, headers={"Cache-Control": "private, no-store"}
    )


@router.post(
    "/{study_id}/votes",
    status_code=201,
    response_model=VoteResource,
    summary="Answer a pair: left, right, tie or skip",
    responses=error_responses(401, 404, 409, 422, 503),
)
async def cast_vote(
    study_id: StudyId, body: VoteCreate, evals: EvalsDep, owner: OwnerDep
) -> VoteResource:
    """One vote per rater and pair (a second one is 409)."""
    record = await _study(evals, study_id, owner)
    stored = await run_in_threadpool(evals.vote, record, body, rater=body.rater or owner)
    return VoteResource(
        **{key: stored[key] for key in ("pair_id", "rater", "choice", "reason", "at")}
    )


@router.get(
    "/{study_id}/votes",
    summary="Export every vote (JSON or CSV, arm names revealed)",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}, **error_responses(401, 404, 422, 503)},
)  # fmt: skip
def export_votes(
    study_id: StudyId,
    evals: EvalsDep,
    owner: OwnerDep,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
):
    record = evals.get(study_id, owner=owner)
    votes = evals.votes(record)
    if format == "csv":
        return PlainTextResponse(
            results.to_csv(record, votes),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{record.id}-votes.csv"'},
        )
    return {"data": [results.export_row(record, vote) for vote in votes]}


@router.get(
    "/{study_id}/results",
    summary="Win rates, Bradley-Terry strengths, agreement and position bias",
    responses=error_responses(401, 404, 422, 503),
)
async def study_results(
    study_id: StudyId,
    evals: EvalsDep,
    owner: OwnerDep,
    include_flagged: Annotated[bool, Query(description="Count votes of raters who failed attention checks.")] = False,
    difference: Annotated[float, Query(gt=0, lt=0.5, description="Win-rate difference from 0.5 to size `votes_needed` for.")] = 0.1,
) -> dict:  # fmt: skip
    record = await _study(evals, study_id, owner)
    votes = await run_in_threadpool(evals.votes, record)
    return await run_in_threadpool(
        results.compute, record, votes, include_flagged=include_flagged, difference=difference
    )
