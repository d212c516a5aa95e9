"""The page's live view in a real browser: headless Chromium's fake microphone (a dev-speech
recording of spk1, looped) → MediaRecorder (WebM/Opus, 250 ms chunks) → `WebSocket
/identify-live` on a real `voicesearch serve` with the real VoxCeleb ECAPA and Silero VAD, the
API key typed into the page (so it travels as `?api_key=`). spk1 is enrolled from two other
sentences; the page must say "Now speaking: Speaker One", and the summary after Stop.

Fixtures and skip rules are tests/test_page_browser.py's.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.server import ServerProcess
from tests.test_page_browser import (  # noqa: F401 - fixtures used by name
    ADMIN_KEY,
    SAMPLES,
    WAIT_S,
    browser,
    element_text,
    needs_real_audio,
    require_browser,
    screenshot_dir,
    server,
    wait_until,
)


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.timeout(300)
@needs_real_audio
def test_live_view_names_the_speaker_at_the_microphone(request: pytest.FixtureRequest) -> None:
    require_browser()
    served: ServerProcess = request.getfixturevalue("server")
    driver = request.getfixturevalue("browser")
    from selenium.webdriver.common.by import By

    screenshots = screenshot_dir(request)

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
        return element_text(driver, element_id)

    def wait_for(condition: Callable[[], object], what: str) -> None:
        def failed() -> str:
            driver.save_screenshot(str(screenshots / f"failed-live-{what.replace(' ', '-')}.png"))
            return f": {text_of('live-now')!r} {text_of('live-result')!r}"

        wait_until(driver, condition, what, failed, poll_s=0.1)

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
