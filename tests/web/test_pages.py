"""The playground and the evaluation page in headless Chromium, against a real gateway and worker.

Set GENSVC_SCREENSHOT_DIR to keep screenshots of both pages (docs/ holds the committed ones).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from browser import console_errors
from support import wait_for

from generative_service import rules

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

API_KEY = "browser-key"  # the key of the web_service fixture (tests/web/conftest.py)
TIMEOUT_S = 120


def screenshot(driver, name: str) -> None:
    directory = os.environ.get("GENSVC_SCREENSHOT_DIR")
    if directory:
        driver.save_screenshot(str(Path(directory) / name))


def image_loaded(driver, selector: str) -> bool:
    return bool(driver.execute_script(
        "const img = document.querySelector(arguments[0]); return img && img.complete && img.naturalWidth > 0;",
        selector,
    ))  # fmt: skip


def save_key(driver) -> None:
    driver.find_element(By.ID, "api-key").send_keys(API_KEY)
    driver.find_element(By.ID, "save-key").click()


def test_playground_generates_an_image_with_live_progress(
    start_service, make_settings, browser
) -> None:
    service = start_service(make_settings(api_keys=[API_KEY]), workers=1)
    browser.get(f"{service.base_url}/")
    assert browser.current_url.endswith("/playground")
    save_key(browser)
    wait = WebDriverWait(browser, TIMEOUT_S)
    wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#sampler option")
    )  # /v1/models answered with the key
    prompt = browser.find_element(By.ID, "prompt")
    assert prompt.get_attribute("placeholder") == "a red circle above a blue square"
    prompt.send_keys("a red circle above a blue square")
    steps = browser.find_element(By.ID, "steps")
    # the form's bounds are the server's rules (GET /v1/models limits), not a second copy
    assert steps.get_attribute("max") == str(rules.MAX_STEPS)
    assert browser.find_element(By.ID, "width").get_attribute("step") == str(rules.SIDE_MULTIPLE)
    guidance = browser.find_element(By.ID, "guidance_scale")
    assert float(guidance.get_attribute("max")) == rules.MAX_GUIDANCE
    # left empty, the job runs the model's guidance (tiny: none of its own, the rules' default)
    assert guidance.get_attribute("placeholder") == f"model default ({rules.DEFAULT_GUIDANCE:g})"
    steps.clear()
    steps.send_keys("8")
    browser.find_element(By.ID, "seed").send_keys("1234")
    browser.find_element(By.ID, "generate").click()

    wait.until(EC.text_to_be_present_in_element((By.ID, "progress-text"), "100 %"))
    wait.until(lambda d: image_loaded(d, "#images img.image"))
    caption = browser.find_element(By.CSS_SELECTOR, "#images figcaption").text
    assert "seed 1234" in caption and "NSFW" in caption
    assert browser.find_element(By.ID, "status").text.startswith("Done")
    assert (
        browser.find_element(By.CSS_SELECTOR, "#images a.download")
        .get_attribute("href")
        .startswith("blob:")
    )
    # The job went in with the page's parameters, and the gallery shows it.
    job = httpx.get(
        f"{service.base_url}/v1/jobs", headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()["data"][0]
    assert (
        job["request"]["steps"] == 8
        and job["request"]["seed"] == 1234
        and job["request"]["preview"]
    )
    wait.until(lambda d: image_loaded(d, "#gallery img"))
    browser.find_element(By.ID, "copy-curl").click()
    curl = browser.find_element(By.ID, "curl").text
    assert (
        curl.startswith("curl")
        and "/v1/jobs" in curl
        and "Bearer $GENSVC_API_KEY" in curl
        and API_KEY not in curl
    )
    screenshot(browser, "playground.png")
    assert console_errors(browser) == []


def test_playground_shows_errors_in_the_api_words(web_service, browser) -> None:
    service = web_service
    browser.get(f"{service.base_url}/playground")
    wait = WebDriverWait(browser, 30)
    wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "Bearer API key is required"))
    save_key(browser)
    browser.find_element(By.ID, "width").send_keys("65")
    browser.find_element(By.ID, "generate").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "width: must be a multiple of 8"))


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_eval_page_casts_votes_and_the_results_change(
    start_service, make_settings, browser
) -> None:
    service = start_service(make_settings(api_keys=[API_KEY]), workers=1)
    client = httpx.Client(
        base_url=service.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    study = client.post("/v1/evals", json={
        "name": "steps", "prompts": ["a red circle above a blue square", "a green triangle"], "seeds": [3],
        "arms": [{"name": "four steps", "params": {"steps": 4}}, {"name": "one step", "params": {"steps": 1}}],
        "attention_share": 0.5,
    }).json()  # fmt: skip
    wait_for(lambda: client.get(f"/v1/evals/{study['id']}").json()["status"] == "ready",
             timeout=TIMEOUT_S, what="the study's images")  # fmt: skip

    browser.get(f"{service.base_url}/eval?study={study['id']}")
    save_key(browser)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "study").get_attribute("value") == study["id"])
    browser.find_element(By.ID, "rater").send_keys("ann")
    browser.find_element(By.ID, "start").click()
    wait.until(lambda d: image_loaded(d, "#left") and image_loaded(d, "#right"))
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "four steps" not in page and "one step" not in page  # blind
    browser.find_element(By.ID, "show-results").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "results-summary"), "0 votes counted"))

    for expected in range(1, 4):
        status = browser.find_element(By.ID, "rating-status").text
        browser.find_element(By.ID, "reason").send_keys("sharper")
        browser.find_element(By.CSS_SELECTOR, ".votes button[data-choice=left]").click()
        wait.until(lambda d, before=status: d.find_element(By.ID, "rating-status").text != before
                   or d.find_element(By.ID, "done").is_displayed())  # fmt: skip
        wait.until(
            EC.text_to_be_present_in_element((By.ID, "results-summary"), f"{expected} in all")
        )
    wait.until(lambda d: d.find_element(By.ID, "done").is_displayed())
    results = browser.find_element(By.ID, "results").text
    assert "four steps" in results and "one step" in results
    # Always "left" fails the attention check (the same image twice): the rater is flagged.
    assert "flagged" in results.split("Raters")[-1]
    votes = client.get(f"/v1/evals/{study['id']}/votes").json()["data"]
    assert len(votes) == 3 and {vote["rater"] for vote in votes} == {"ann"}
    assert {vote["reason"] for vote in votes} == {"sharper"}
    screenshot(browser, "eval.png")
    assert console_errors(browser) == []
