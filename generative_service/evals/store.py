"""Studies and votes in Redis, and the images a study generates through the job queue.

Redis keys (named in keys.py):
  P:eval:{id}          JSON StudyRecord (arms, prompts, seeds, the study's images and pairs)
  P:eval:{id}:votes    hash "{rater}\\n{pair_id}" -> JSON vote (HSETNX: one vote per rater and pair)
  P:evals:{owner}      sorted set of the owner's study ids by creation time
All three expire GENSVC_EVAL_RETENTION_S after the last vote (or the creation); the images are
ordinary jobs of the owner and follow GENSVC_RETENTION_S.

Images are submitted through `api.submit.submit`, the function POST /v1/jobs uses, with an
Idempotency-Key per image: a study whose images do not all fit the queue at once (MAX_QUEUED,
per-key quotas) submits the rest whenever it is read again, and two gateways reading the same
study at once make each image once.
"""

from __future__ import annotations

import builtins
import json
import random
import secrets
from pathlib import Path
from typing import cast

from pydantic import ValidationError
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

from generative_service.errors import Conflict, InvalidRequest, NotFound, ServiceError
from generative_service.evals import study as design_
from generative_service.evals.schemas import (
    STUDY_OWNED_FIELDS,
    Arm,
    ImageCounts,
    StudyCreate,
    StudyResource,
    StudyStatus,
    VoteCreate,
)
from generative_service.evals.study import Item, StudyRecord
from generative_service.jobs import JobStore
from generative_service.redis_client import reply_text
from generative_service.schemas import GenerationRequest, JobStatus, utcnow
from generative_service.settings import Settings

REPO_PROMPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "prompts.txt"
MAX_ERRORS_SHOWN = 5


def load_prompts(path: Path) -> list[str]:
    """One prompt a line; blank lines and `#` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class EvalStore:
    """Creates, reads and refreshes studies; records and lists votes."""

    def __init__(
        self, redis: Redis, aredis: AsyncRedis, settings: Settings, jobs: JobStore
    ) -> None:
        self.redis = redis
        self.aredis = aredis
        self.settings = settings
        self.jobs = jobs
        self.prefix = settings.key_prefix

    # --- keys -----------------------------------------------------------------------------------
    def study_key(self, study_id: str) -> str:
        return self.settings.keys.eval_study(study_id)

    def votes_key(self, study_id: str) -> str:
        return self.settings.keys.eval_votes(study_id)

    def owner_key(self, owner: str) -> str:
        return self.settings.keys.eval_owner(owner)

    # --- create ---------------------------------------------------------------------------------
    async def create(self, spec: StudyCreate, *, owner: str) -> StudyRecord:
        """Validate every arm's request, store the study and submit as many images as fit.

        Raises:
            InvalidRequest: an arm's parameters are not a valid job, or the study is too large.
        """
        prompts = self._prompts(spec)
        seeds = spec.seeds or [secrets.randbelow(2**32) for _ in range(spec.seeds_per_prompt)]
        images = len(spec.arms) * len(prompts) * len(seeds)
        if images > self.settings.eval_max_images:
            raise InvalidRequest(
                "arms",
                f"{len(spec.arms)} arms x {len(prompts)} prompts x {len(seeds)} seeds = {images} images; "
                f"at most {self.settings.eval_max_images} (GENSVC_EVAL_MAX_IMAGES)",
            )
        arms = [Arm(name=arm.name, params=arm.params) for arm in spec.arms]
        for index, arm in enumerate(arms):
            await run_in_threadpool(
                self._check_arm, index, spec.base, arm.params, prompts[0], seeds[0]
            )
        items, pairs = design_.design(
            arms=len(arms),
            prompts=len(prompts),
            seeds=len(seeds),
            attention_share=spec.attention_share,
            rng=random.Random(secrets.randbits(64)),
        )
        record = StudyRecord(
            id=design_.new_study_id(),
            owner=owner,
            name=spec.name,
            created_at=utcnow(),
            secret=secrets.token_hex(16),
            arms=arms,
            base=spec.base,
            prompts=prompts,
            seeds=seeds,
            attention_fail_limit=spec.attention_fail_limit,
            items=items,
            pairs=pairs,
        )
        await run_in_threadpool(self._save_new, record)
        return await self.refresh(record)

    def _save_new(self, record: StudyRecord) -> None:
        retention = self.settings.eval_retention_s
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.study_key(record.id), record.model_dump_json(), ex=retention)
        pipe.zadd(self.owner_key(record.owner), {record.id: record.created_at.timestamp()})
        pipe.expire(self.owner_key(record.owner), retention)
        pipe.execute()

    def _prompts(self, spec: StudyCreate) -> list[str]:
        prompts = spec.prompts
        if prompts is None:
            path = self.settings.eval_prompts_file or REPO_PROMPTS
            if not path.is_file():
                raise InvalidRequest(
                    "prompts", f"required: the default prompt set {path} does not exist here"
                )
            prompts = load_prompts(path)
        return prompts[: spec.max_prompts] if spec.max_prompts else prompts

    def _check_arm(self, index: int, base: dict, params: dict, prompt: str, seed: int) -> None:
        from generative_service.api import submit

        for source, values in (("base", base), (f"arms[{index}].params", params)):
            for name in STUDY_OWNED_FIELDS:
                if name in values:
                    raise InvalidRequest(f"{source}.{name}", "is set by the study, not by an arm")
        try:
            request = self._request(base, params, prompt, seed, study_id="eval_check")
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise InvalidRequest(
                f"arms[{index}].params.{where}", error["msg"].removeprefix("Value error, ")
            ) from None
        try:
            submit.check_request(request, self.settings)
        except InvalidRequest as exc:
            raise InvalidRequest(f"arms[{index}].params.{exc.field}", exc.reason) from None

    @staticmethod
    def _request(
        base: dict, params: dict, prompt: str, seed: int, *, study_id: str
    ) -> GenerationRequest:
        values = {**base, **params, "prompt": prompt, "seed": seed, "num_images": 1}
        return GenerationRequest(**values, metadata={"eval_study": study_id})

    # --- read -----------------------------------------------------------------------------------
    def get(self, study_id: str, *, owner: str) -> StudyRecord:
        """The study, or NotFound (also for another owner's study)."""
        raw = self.redis.get(self.study_key(study_id)) if _plausible_id(study_id) else None
        record = StudyRecord.model_validate_json(raw) if raw else None
        if record is None or record.owner != owner:
            raise NotFound(f"study {study_id!r} not found")
        return record

    def list(self, *, owner: str, limit: int = 100) -> list[StudyRecord]:
        out = []
        for raw_id in self.redis.zrevrange(self.owner_key(owner), 0, limit - 1):
            study_id = reply_text(cast("bytes | str", raw_id))  # no scores asked: members only
            try:
                out.append(self.get(study_id, owner=owner))
            except NotFound:
                self.redis.zrem(self.owner_key(owner), study_id)  # expired
        return out

    def delete(self, study_id: str, *, owner: str) -> None:
        self.get(study_id, owner=owner)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.study_key(study_id), self.votes_key(study_id))
        pipe.zrem(self.owner_key(owner), study_id)
        pipe.execute()

    # --- images ---------------------------------------------------------------------------------
    async def refresh(self, record: StudyRecord) -> StudyRecord:
        """Bring item states up to date with their jobs and submit images not yet admitted."""
        if not record.generating:
            return record
        before = record.model_dump_json()
        await run_in_threadpool(self._read_jobs, record)
        for item in record.items:
            if item.state == "pending" and not await self._submit(record, item):
                break  # the queue is full now; the rest go in on a later read
        if record.model_dump_json() != before:
            await self.aredis.set(self.study_key(record.id), record.model_dump_json(), keepttl=True)
        return record

    def _read_jobs(self, record: StudyRecord) -> None:
        for item in record.items:
            if item.state == "queued":
                self._read_job(item)

    async def _submit(self, record: StudyRecord, item: Item) -> bool:
        """Submit `item`'s job. False when the queue has no room for it now."""
        from generative_service.api.submit import Submitter

        arm = record.arms[item.arm]
        request = self._request(
            record.base, arm.params, record.prompts[item.prompt], record.seeds[item.seed],
            study_id=record.id,
        )  # fmt: skip
        try:
            submitter = Submitter(self.jobs, self.redis, self.aredis, self.settings)
            submitted = await submitter.submit(
                request,
                owner=record.owner,
                idempotency_key=f"{record.id}.{item.arm}.{item.prompt}.{item.seed}",
            )
        except ServiceError as exc:
            if exc.status_code in (429, 503):
                return False
            item.state, item.error = "failed", exc.message  # e.g. a LoRA deleted since creation
            return True
        item.job_id, item.state = submitted.record.id, "queued"
        return True

    def _read_job(self, item: Item) -> None:
        try:
            job = self.jobs.get(item.job_id or "")
        except NotFound:
            item.state, item.error = "failed", f"job {item.job_id} expired"
            return
        if job.status == JobStatus.succeeded:
            image = job.images[0] if job.images else None
            if image is None or image.blocked or image.url is None:
                item.state, item.error = (
                    "failed",
                    f"job {job.id}: image blocked by the safety filter",
                )
            else:
                item.state = "succeeded"
        elif job.status.is_terminal:
            reason = job.error.message if job.error else job.status.value
            item.state, item.error = "failed", f"job {job.id} {job.status.value}: {reason}"

    # --- votes ----------------------------------------------------------------------------------
    def vote(self, record: StudyRecord, vote: VoteCreate, *, rater: str) -> dict:
        """Record `rater`'s answer on a pair. Returns the stored vote.

        Raises:
            NotFound: no such pair in the study.
            Conflict: the rater already answered this pair, or its images are not ready.
        """
        pair = record.pair(vote.pair_id)
        if pair is None:
            raise NotFound(f"pair {vote.pair_id!r} not found in study {record.id}")
        state = record.pair_state(pair)
        if state != "succeeded":
            raise Conflict(
                f"pair {pair.id} cannot be rated: its images are {'still generating' if state == 'queued' else 'missing'}"
            )
        left, right = design_.sides(record, rater, pair)
        stored = {
            "rater": rater,
            "pair_id": pair.id,
            "choice": vote.choice,
            "reason": vote.reason,
            "at": utcnow().isoformat(),
            "left_arm": left,
            "right_arm": right,
            "check": pair.is_check,
            "prompt": pair.prompt,
            "seed": pair.seed,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(self.votes_key(record.id), f"{rater}\n{pair.id}", json.dumps(stored))
        for key in (
            self.votes_key(record.id),
            self.study_key(record.id),
            self.owner_key(record.owner),
        ):
            pipe.expire(key, self.settings.eval_retention_s)
        if not pipe.execute()[0]:
            raise Conflict(f"{rater} already answered pair {pair.id}; one vote per rater and pair")
        return stored

    def votes(self, record: StudyRecord) -> builtins.list[dict]:
        """Every vote of the study, oldest first."""
        raw = self.redis.hvals(self.votes_key(record.id))
        return sorted((json.loads(value) for value in raw), key=lambda vote: vote["at"])

    def answered(self, record: StudyRecord, rater: str) -> set[str]:
        fields = [reply_text(field) for field in self.redis.hkeys(self.votes_key(record.id))]
        prefix = f"{rater}\n"
        return {field.removeprefix(prefix) for field in fields if field.startswith(prefix)}

    # --- the public resource --------------------------------------------------------------------
    def to_resource(self, record: StudyRecord, *, base_url: str = "") -> StudyResource:
        states = [item.state for item in record.items]
        real = [pair for pair in record.pairs if not pair.is_check]
        checks = [pair for pair in record.pairs if pair.is_check]
        root = f"{base_url}/v1/evals/{record.id}"
        return StudyResource(
            id=record.id,
            name=record.name,
            status=StudyStatus.generating if record.generating else StudyStatus.ready,
            created_at=record.created_at,
            arms=record.arms,
            prompts=record.prompts,
            seeds=record.seeds,
            images=ImageCounts(
                total=len(states),
                succeeded=states.count("succeeded"),
                failed=states.count("failed"),
                waiting=states.count("pending") + states.count("queued"),
            ),
            pairs=sum(record.pair_state(pair) != "failed" for pair in real),
            attention_checks=sum(record.pair_state(pair) != "failed" for pair in checks),
            votes=self.redis.hlen(self.votes_key(record.id)),
            errors=[item.error for item in record.items if item.error][:MAX_ERRORS_SHOWN],
            links={
                "self": root,
                "next": f"{root}/next",
                "votes": f"{root}/votes",
                "results": f"{root}/results",
                "page": f"{base_url}/eval?study={record.id}",
            },
        )


def _plausible_id(study_id: str) -> bool:
    return study_id.startswith("eval_") and len(study_id) <= 64 and study_id[5:].isalnum()
