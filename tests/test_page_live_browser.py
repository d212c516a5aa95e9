"""The page's live view in a real browser: headless Chromium's fake microphone (a dev-speech
recording of spk1, looped) → MediaRecorder (WebM/Opus, 250 ms chunks) → `WebSocket
/identify-live` on a real `voicesearch serve` with the real VoxCeleb ECAPA and Silero VAD, the
API key typed into the page (so it travels as `?api_key=`). spk1 is enrolled from two other
sentences; the page must say "Now speaking: Speaker One", and the summary after Stop.

Fixtures and skip rules are tests/test_page_browser.py's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.paths import HAS_DEV_SPEECH, HAS_REAL_MODEL
from tests.server import ServerProcess
from tests.test_page_browser import (  # noqa: F401 - fixtures used by name
    ADMIN_KEY,
    COMMITTED_SCREENSHOTS,
    SAMPLES,
    WAIT_S,
    browser,
    require_browser,
    server,
)


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    not (HAS_REAL_MODEL and HAS_DEV_SPEECH),
    reason="real VoxCeleb model / dev-speech not found (set VOICESEARCH_TEST_SHARED)",
)
def test_live_view_names_the_speaker_at_the_microphone(request: pytest.FixtureRequest) -> None:
    require_browser()
    served: ServerProcess = request.getfixturevalue("server")
    driver = request.getfixturevalue("browser")
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if os.environ.get("VOICESEARCH_UPDATE_SCREENSHOTS") == "1":
        screenshots = COMMITTED_SCREENSHOTS
    else:
        screenshots = Path(request.getfixturevalue("tmp_path")) / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)

    files = [
        ("audio", (f"spk1_snt{i}.wav", (SAMPLES / f"spk1_snt{i}.wav").read_bytes(), "audio/wav"))
        for i in (2, 3, 4)
    ]
    enrolled = httpx.post(
        f"{served.base_url}/speakers",
        files=files,
        data={"external_id": "spk1", "name": "Speaker One"},
        headers={"X-API-Key": ADMIN_KEY},
        timeout=WAIT_S,
    )
    assert enrolled.status_code == 201, enrolled.text

    def text_of(element_id: str) -> str:
        elements = driver.find_elements(By.ID, element_id)
        return elements[0].text if elements else ""

    def wait_for(condition: Callable[[], object], what: str) -> None:
        try:
            WebDriverWait(
                driver,
                WAIT_S,
                poll_frequency=0.1,
                ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
            ).until(lambda _: condition())
        except Exception:
            driver.save_screenshot(str(screenshots / f"failed-live-{what.replace(' ', '-')}.png"))
            raise AssertionError(
                f"timed out waiting for {what}: {text_of('live-now')!r} {text_of('live-result')!r}"
            ) from None

    driver.get(served.base_url + "/")
    wait_for(lambda: driver.find_element(By.ID, "api-key-section").is_displayed(), "key field")
    driver.find_element(By.ID, "api-key").send_keys(ADMIN_KEY)
    driver.find_element(By.ID, "api-key-save").click()
    driver.find_element(By.ID, "live-language").send_keys("en")
    driver.find_element(By.ID, "live-toggle").click()
    wait_for(lambda: text_of("live-now") == "Now speaking: Speaker One", "the speaker named")
    assert "score" in text_of("live-detail") and "threshold" in text_of("live-detail")
    driver.execute_script("document.getElementById('live-title').scrollIntoView({block: 'start'})")
    driver.save_screenshot(str(screenshots / "08-live-now-speaking.png"))
    driver.find_element(By.ID, "live-toggle").click()
    wait_for(lambda: "Listened to" in text_of("live-summary"), "the summary")
    assert "spk1:" in text_of("live-result"), text_of("live-result")
    assert driver.find_element(By.ID, "live-toggle").text == "Start listening"
    driver.save_screenshot(str(screenshots / "09-live-summary.png"))
