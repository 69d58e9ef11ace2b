"""A study end to end: a real gateway and GPU worker on the tiny model, and a gateway restart."""

from __future__ import annotations

import httpx
from support import wait_for


def test_study_images_come_from_the_worker_and_votes_survive_a_gateway_restart(
    start_service, settings
) -> None:
    service = start_service(settings, workers=1)
    client = httpx.Client(base_url=service.base_url, timeout=30)
    body = {
        "name": "steps",
        "arms": [{"name": "two", "params": {"steps": 2}}, {"name": "one", "params": {"steps": 1}}],
        "prompts": ["a red circle above a blue square", "a green triangle"],
        "seeds": [5],
        "attention_share": 0.5,
    }
    study = client.post("/v1/evals", json=body).json()
    ready = wait_for(lambda: (s := client.get(f"/v1/evals/{study['id']}").json())["status"] == "ready" and s,
                     timeout=120, what="the study's images")  # fmt: skip
    assert ready["images"]["succeeded"] == 4 and ready["pairs"] == 2

    pair = client.get(f"/v1/evals/{study['id']}/next", params={"rater": "ann"}).json()
    left = client.get(pair["left"]["image_url"])
    assert left.headers["content-type"] == "image/png" and left.content.startswith(b"\x89PNG")
    vote = {
        "rater": "ann",
        "pair_id": pair["pair_id"],
        "choice": "tie" if pair["pair_id"].startswith("c") else "left",
    }
    assert client.post(f"/v1/evals/{study['id']}/votes", json=vote).status_code == 201
    before = client.get(f"/v1/evals/{study['id']}/results").json()

    service.kill("gateway")
    restarted = start_service(settings, workers=0)
    again = httpx.Client(base_url=restarted.base_url, timeout=30)
    assert again.get(f"/v1/evals/{study['id']}/results").json()["votes"] == before["votes"]
    assert (
        again.get(f"/v1/evals/{study['id']}/next", params={"rater": "ann"}).json()["answered"] == 1
    )
