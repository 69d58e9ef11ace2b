"""/v1/evals through the in-process gateway, with jobs driven by a fake worker (no torch)."""

from __future__ import annotations

import csv
import io

import pytest
from api_helpers import FakeWorker, check_error
from PIL import Image

from generative_service.storage import encode_image

PROMPTS = ["a red circle above a blue square", "a green triangle"]


def study_body(**overrides) -> dict:
    body = {
        "name": "steps",
        "arms": [{"name": "many", "params": {"steps": 4}}, {"name": "few", "params": {"steps": 1}}],
        "prompts": PROMPTS,
        "seeds": [7],
        "attention_share": 0.5,
    }
    body.update(overrides)
    return body


def run_all(client, fake_worker: FakeWorker, study_id: str) -> dict:
    """Let the fake worker finish every job of the study; returns the study."""
    for _ in range(10):
        study = client.get(f"/v1/evals/{study_id}").json()
        if study["status"] == "ready":
            return study
        for job in client.get("/v1/jobs", params={"status": "queued"}).json()["data"]:
            fake_worker.run(job["id"], steps=job["request"]["steps"])
            # One colour per job, so raters (and these tests) can tell the images apart.
            colour = tuple(bytes.fromhex(job["id"][-6:]))
            data, content_type = encode_image(Image.new("RGB", (8, 8), colour), "png")
            fake_worker.storage.put(job["id"], 0, data, content_type)
    pytest.fail(f"study never became ready: {study}")


def vote_all(client, study_id: str, rater: str, choose) -> list[dict]:
    """Answer every pair as `choose(pair, left_bytes, right_bytes)` says; returns the pairs seen."""
    seen = []
    while not (pair := client.get(f"/v1/evals/{study_id}/next", params={"rater": rater}).json())[
        "done"
    ]:
        left = client.get(pair["left"]["image_url"]).content
        right = client.get(pair["right"]["image_url"]).content
        choice = choose(pair, left, right)
        response = client.post(f"/v1/evals/{study_id}/votes",
                               json={"rater": rater, "pair_id": pair["pair_id"], "choice": choice})  # fmt: skip
        assert response.status_code == 201, response.text
        seen.append({**pair, "choice": choice, "same": left == right})
    return seen


def test_study_generates_through_the_queue_and_reports_results(
    api_client, fake_worker, settings
) -> None:
    response = api_client.post("/v1/evals", json=study_body())
    assert response.status_code == 201, response.text
    study = response.json()
    assert response.headers["Location"] == f"/v1/evals/{study['id']}"
    assert study["status"] == "generating" and study["images"]["total"] == 4
    jobs = api_client.get("/v1/jobs").json()["data"]
    assert sorted(job["request"]["steps"] for job in jobs) == [1, 1, 4, 4]
    assert {job["request"]["seed"] for job in jobs} == {7}
    assert all(job["request"]["metadata"] == {"eval_study": study["id"]} for job in jobs)

    study = run_all(api_client, fake_worker, study["id"])
    assert study["pairs"] == 2 and study["attention_checks"] == 1

    # Blind: nothing a rater sees names an arm.
    pair = api_client.get(f"/v1/evals/{study['id']}/next", params={"rater": "ann"}).json()
    assert pair["prompt"] in PROMPTS and "many" not in str(pair) and "few" not in str(pair)

    # "ann" always prefers the image of the 4-step job: find it by the job's image bytes.
    many = {
        fake_worker.storage.get(job["id"], 0)[0] for job in jobs if job["request"]["steps"] == 4
    }
    seen = vote_all(api_client, study["id"], "ann",
                    lambda p, left, right: "tie" if left == right else "left" if left in many else "right")  # fmt: skip
    assert len(seen) == 3 and sum(item["same"] for item in seen) == 1

    results = api_client.get(f"/v1/evals/{study['id']}/results").json()
    (pair_result,) = results["pairs"]
    assert pair_result["arms"] == ["many", "few"] and pair_result["wins"] == [2, 0]
    assert pair_result["win_rate"] == 1.0 and pair_result["win_rate_ci95"][0] > 0.3
    assert results["bradley_terry"] is None  # only two arms
    assert [p["pairs"][0]["wins"] for p in results["per_prompt"]] == [[1, 0], [1, 0]]
    assert results["raters"] == [{"rater": "ann", "votes": 3, "skips": 0, "checks": 1,
                                  "checks_failed": 0, "flagged": False}]  # fmt: skip
    assert results["votes_needed"]["decisive_votes"] == 194
    assert pair_result["more_votes_needed"] == 192

    exported = api_client.get(f"/v1/evals/{study['id']}/votes", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert exported.headers["content-type"].startswith("text/csv") and len(rows) == 3
    assert {row["winner_arm"] for row in rows if row["check"] == "False"} == {"many"}
    as_json = api_client.get(f"/v1/evals/{study['id']}/votes").json()["data"]
    assert [row["pair_id"] for row in as_json] == [row["pair_id"] for row in rows]


def test_one_vote_per_rater_and_pair_and_sides_differ_between_raters(
    api_client, fake_worker
) -> None:
    study = api_client.post(
        "/v1/evals", json=study_body(prompts=PROMPTS * 4, attention_share=0)
    ).json()
    run_all(api_client, fake_worker, study["id"])
    pair = api_client.get(f"/v1/evals/{study['id']}/next", params={"rater": "bo"}).json()
    vote = {"rater": "bo", "pair_id": pair["pair_id"], "choice": "skip", "reason": "cannot tell"}
    assert api_client.post(f"/v1/evals/{study['id']}/votes", json=vote).status_code == 201
    check_error(api_client.post(f"/v1/evals/{study['id']}/votes", json={**vote, "choice": "left"}),
                409, "conflict", "one vote per rater")  # fmt: skip
    check_error(
        api_client.post(f"/v1/evals/{study['id']}/votes", json={**vote, "pair_id": "p9.9.0.1"}), 404
    )
    check_error(
        api_client.post(f"/v1/evals/{study['id']}/votes", json={**vote, "choice": "both"}),
        422,
        message="choice",
    )
    after = api_client.get(f"/v1/evals/{study['id']}/next", params={"rater": "bo"}).json()
    assert after["pair_id"] != pair["pair_id"] and after["answered"] == 1

    # The same pair shows its images in a rater-specific order: over 8 pairs, raters disagree somewhere.
    def left_images(rater: str) -> dict[str, bytes]:
        return {
            p["id"]: api_client.get(f"/v1/evals/{study['id']}/pairs/{p['id']}/left", params={"rater": rater}).content
            for p in [{"id": f"p{i}.0.0.1"} for i in range(8)]
        }  # fmt: skip

    assert left_images("ann") != left_images("cy")
    assert left_images("ann") == left_images("ann")


def test_rater_failing_attention_checks_is_flagged_and_left_out(api_client, fake_worker) -> None:
    study = api_client.post("/v1/evals", json=study_body(attention_share=0.5)).json()
    run_all(api_client, fake_worker, study["id"])
    vote_all(api_client, study["id"], "careless", lambda p, left, right: "left")
    vote_all(
        api_client,
        study["id"],
        "careful",
        lambda p, left, right: "tie" if left == right else "right",
    )
    results = api_client.get(f"/v1/evals/{study['id']}/results").json()
    raters = {r["rater"]: r for r in results["raters"]}
    assert raters["careless"]["flagged"] and raters["careless"]["checks_failed"] == 1
    assert not raters["careful"]["flagged"]
    assert results["votes"]["counted"] == 2 and results["position_bias"]["left_share"] == 0.0
    everyone = api_client.get(
        f"/v1/evals/{study['id']}/results", params={"include_flagged": True}
    ).json()
    assert everyone["votes"]["counted"] == 4 and everyone["position_bias"]["left_share"] == 0.5
    assert everyone["agreement"]["items"] == 2 and everyone["agreement"]["raters"] == 2


def test_three_arms_get_bradley_terry_strengths(api_client, fake_worker) -> None:
    arms = [{"name": f"s{steps}", "params": {"steps": steps}} for steps in (1, 2, 3)]
    study = api_client.post("/v1/evals", json=study_body(arms=arms, attention_share=0)).json()
    assert study["images"]["total"] == 6
    run_all(api_client, fake_worker, study["id"])
    vote_all(api_client, study["id"], "ann", lambda p, left, right: "left")
    bt = api_client.get(f"/v1/evals/{study['id']}/results").json()["bradley_terry"]
    assert [arm["arm"] for arm in bt["arms"]] == ["s1", "s2", "s3"]
    assert sum(arm["strength"] for arm in bt["arms"]) == pytest.approx(1.0)
    assert all(arm["ci95"][0] <= arm["strength"] <= arm["ci95"][1] for arm in bt["arms"])


def test_studies_are_private_to_their_key(make_settings, make_api_client, make_fake_worker) -> None:
    settings = make_settings(api_keys=["alice-key", "bob-key"])
    alice = make_api_client(settings, headers={"Authorization": "Bearer alice-key"})
    bob = make_api_client(settings, headers={"Authorization": "Bearer bob-key"})
    study = alice.post("/v1/evals", json=study_body()).json()
    for path in ("", "/next", "/results", "/votes", "/pairs/p0.0.0.1/left"):
        check_error(bob.get(f"/v1/evals/{study['id']}{path}"), 404)
    check_error(
        bob.post(f"/v1/evals/{study['id']}/votes", json={"pair_id": "p0.0.0.1", "choice": "tie"}),
        404,
    )
    check_error(bob.delete(f"/v1/evals/{study['id']}"), 404)
    assert bob.get("/v1/evals").json() == {"data": []}
    assert [s["id"] for s in alice.get("/v1/evals").json()["data"]] == [study["id"]]
    check_error(make_api_client(settings).get(f"/v1/evals/{study['id']}"), 401)
    assert alice.delete(f"/v1/evals/{study['id']}").status_code == 204
    check_error(alice.get(f"/v1/evals/{study['id']}"), 404)


def test_a_study_larger_than_the_queue_is_submitted_as_room_appears(
    make_settings, make_api_client, make_fake_worker
) -> None:
    settings = make_settings(max_queued=2)
    client, worker = make_api_client(settings), make_fake_worker(settings)
    study = client.post("/v1/evals", json=study_body(seeds=[1, 2])).json()
    assert study["images"] == {"total": 8, "succeeded": 0, "failed": 0, "waiting": 8}
    assert len(client.get("/v1/jobs").json()["data"]) == 2  # the queue holds two
    study = run_all(client, worker, study["id"])
    assert study["images"]["succeeded"] == 8 and len(client.get("/v1/jobs").json()["data"]) == 8


def test_failed_images_drop_their_pairs(api_client, fake_worker) -> None:
    study = api_client.post("/v1/evals", json=study_body(attention_share=0)).json()
    first = api_client.get("/v1/jobs").json()["data"][-1]
    fake_worker.start(first["id"])
    api_client.app.state.store.mark_failed(
        first["id"], code="generation_failed", message="out of memory"
    )
    study = run_all(api_client, fake_worker, study["id"])
    assert study["images"]["failed"] == 1 and study["pairs"] == 1
    assert "out of memory" in study["errors"][0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arms": [{"name": "a", "params": {}}]}, "arms"),
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "arm names must be unique"),
        ({"arms": [{"name": "a", "params": {"steps": 0}}, {"name": "b"}]}, "arms[0].params.steps"),
        ({"arms": [{"name": "a", "params": {"sampler": "x"}}, {"name": "b"}]}, "arms[0].params.sampler: unknown sampler"),
        ({"arms": [{"name": "a", "params": {"seed": 3}}, {"name": "b"}]}, "arms[0].params.seed: is set by the study"),
        ({"arms": [{"name": "a", "params": {"loras": [{"name": "nope"}]}}, {"name": "b"}]}, "arms[0].params.loras[0].name: unknown LoRA"),
        ({"base": {"width": 65}}, "arms[0].params.width"),
        ({"prompts": []}, "prompts"),
        ({"seeds": [1] * 16, "prompts": ["x"] * 20}, "GENSVC_EVAL_MAX_IMAGES"),
        ({"attention_share": 0.9}, "attention_share"),
    ],
)  # fmt: skip
def test_bad_studies_are_422_naming_the_field(api_client, change: dict, message: str) -> None:
    check_error(api_client.post("/v1/evals", json=study_body(**change)), 422, message=message)
    assert api_client.get("/v1/jobs").json()["data"] == []


def test_default_prompt_set_is_the_benchmark_prompts(api_client) -> None:
    study = api_client.post("/v1/evals", json=study_body(prompts=None, max_prompts=2)).json()
    assert study["prompts"][0] == "a red double-decker bus driving down a city street"
    assert len(study["prompts"]) == 2
