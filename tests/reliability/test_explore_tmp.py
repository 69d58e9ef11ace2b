import time, httpx
from .helpers import wait_terminal, follow_to_end
def test_timing(start_service, fault_settings):
    s = fault_settings()
    svc = start_service(s, workers=1)
    for body in ({"prompt": "a", "steps": 30}, {"prompt": "a", "steps": 150}, {"prompt": "a", "steps": 50, "width": 256, "height": 256}):
        t = time.monotonic()
        r = httpx.post(f"{svc.base_url}/v1/jobs", json=body); assert r.status_code == 202, r.text
        frames, rc = follow_to_end(svc.base_url, r.json()["id"])
        print(body, round(time.monotonic() - t, 2), frames[-1]["event"], frames[-1]["data"]["job"]["timings"])
