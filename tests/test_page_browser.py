"""The web page in a real browser: headless Chromium (Debian's package, driven by Selenium)
against a real `voicesearch serve` with the real VoxCeleb ECAPA and Silero VAD.

Chromium's fake microphone plays a real dev-speech recording (spk1), so "Record" really goes
through getUserMedia → MediaRecorder (WebM/Opus) → the upload → PyAV. The test enrolls spk1 by
recording, spk2 from dropped files, identifies spk1 from another of its recordings (a file) and
from the microphone, renames and deletes through the page, with API keys on (typed into the
page's key field). Each step leaves a screenshot for review: in the test's temporary folder, or
in docs/screenshots/ (the committed ones) with VOICESEARCH_UPDATE_SCREENSHOTS=1.

Without Chromium/chromedriver or selenium the test skips with the reason, except where the
browser is required (``CI`` or ``VOICESEARCH_REQUIRE_BROWSER`` set, as ``.ci/run`` does): there
a missing browser is a failure. Without the real model and dev-speech (``../shared``) it skips.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.metrics_text import value
from tests.paths import DEV_SPEECH_DIR, HAS_DEV_SPEECH, HAS_REAL_MODEL, REAL_VOXCELEB_DIR, REPO_ROOT
from tests.server import ServerProcess, server_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
COMMITTED_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
SAMPLES = DEV_SPEECH_DIR / "speechbrain_samples" / "ASR"
ADMIN_KEY = "admin-page-test-0123456789"
WAIT_S = 120.0  # a loaded 2-core CI box: one enrollment can take tens of seconds


def browser_required() -> bool:
    return any(os.environ.get(name) for name in ("CI", "VOICESEARCH_REQUIRE_BROWSER"))


def missing_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "Chromium is not installed (apt-get install chromium chromium-driver)"
    return None


#: The real model and dev-speech, which every browser test serves and plays.
needs_real_audio = pytest.mark.skipif(
    not (HAS_REAL_MODEL and HAS_DEV_SPEECH),
    reason="real VoxCeleb model / dev-speech not found (set VOICESEARCH_TEST_SHARED)",
)


def screenshot_dir(request: pytest.FixtureRequest) -> Path:
    """Where a browser test leaves its screenshots: the test's temporary folder, or the
    committed docs/screenshots/ with VOICESEARCH_UPDATE_SCREENSHOTS=1 (a test run must not
    rewrite files of the checkout; the committed set is refreshed on purpose)."""
    if os.environ.get("VOICESEARCH_UPDATE_SCREENSHOTS") == "1":
        folder = COMMITTED_SCREENSHOTS
    else:
        folder = Path(request.getfixturevalue("tmp_path")) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def element_text(driver: object, element_id: str) -> str:
    """The element's text, or "" while it is not on the page."""
    from selenium.webdriver.common.by import By

    elements = driver.find_elements(By.ID, element_id)  # type: ignore[attr-defined]
    return elements[0].text if elements else ""


def wait_until(
    driver: object,
    condition: Callable[[], object],
    what: str,
    on_timeout: Callable[[], str],
    poll_s: float = 0.2,
) -> object:
    """``condition()``'s first truthy value within WAIT_S; on a timeout ``on_timeout()`` (a
    screenshot; it returns what to add to the message) and an AssertionError naming ``what``."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(
            driver,
            WAIT_S,
            poll_frequency=poll_s,
            # The page re-renders results: an element may go stale between find and read.
            ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
        ).until(lambda _: condition())
    except Exception:
        raise AssertionError(f"timed out waiting for {what}{on_timeout()}") from None


def require_browser() -> None:
    reason = missing_browser()
    if reason is None:
        return
    if browser_required():
        pytest.fail(f"the browser test must run here (CI / VOICESEARCH_REQUIRE_BROWSER): {reason}")
    pytest.skip(reason)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    real = {
        "langid": REAL_VOXCELEB_DIR,
        "voxceleb": REAL_VOXCELEB_DIR,
        "cnceleb": REAL_VOXCELEB_DIR,
    }
    env = server_env(
        tmp_path / "data",
        real,
        VOICESEARCH_MODEL_LANGID="off",
        VOICESEARCH_MODEL_CNCELEB="off",
        VOICESEARCH_VAD="silero",
        # Short recordings keep the test short; the product's 10 s is tested elsewhere.
        VOICESEARCH_MIN_ENROLL_SPEECH_S="3",
        VOICESEARCH_MIN_PROBE_SPEECH_S="1",
        VOICESEARCH_API_KEYS=f"admin:page-test:{ADMIN_KEY}",
    )
    process = ServerProcess(env, log_path=tmp_path / "server.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1100,1600",
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={SAMPLES / 'spk1_snt1.wav'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.timeout(400)
@needs_real_audio
def test_record_enroll_identify_manage(request: pytest.FixtureRequest) -> None:
    require_browser()  # before the fixtures start a server and a browser
    server: ServerProcess = request.getfixturevalue("server")
    driver = request.getfixturevalue("browser")
    from selenium.webdriver.common.by import By

    screenshots = screenshot_dir(request)

    def wait_for(condition: Callable[[], object], what: str) -> object:
        def failed() -> str:
            shot(f"failed-{what.replace(' ', '-')}")
            return ""

        return wait_until(driver, condition, what, failed)

    def find(element_id: str):
        return driver.find_element(By.ID, element_id)

    def shot(name: str, focus: str | None = None) -> None:
        if focus is not None:  # the part this step is about, in view
            driver.execute_script(
                "document.getElementById(arguments[0]).scrollIntoView({block: 'center'})", focus
            )
        driver.save_screenshot(str(screenshots / f"{name}.png"))

    def record(prefix: str, seconds: float, expected_clips: int) -> None:
        find(f"{prefix}-record").click()
        wait_for(lambda: "Recording" in find(f"{prefix}-record-state").text, "recording to start")
        time.sleep(seconds)
        find(f"{prefix}-record").click()
        wait_for(
            lambda: (
                len(find(f"{prefix}-clip-list").find_elements(By.TAG_NAME, "li")) == expected_clips
            ),
            f"{prefix} recording {expected_clips}",
        )

    def text_of(element_id: str) -> str:
        return element_text(driver, element_id)

    # 1. The page; keys are on, so it asks for one.
    driver.get(server.base_url + "/")
    wait_for(lambda: find("api-key-section").is_displayed(), "the API key field")
    assert "Service healthy" in text_of("service-status")
    shot("01-page-asks-for-key")
    find("api-key").send_keys(ADMIN_KEY)
    find("api-key-save").click()
    wait_for(lambda: "0 speaker" in text_of("speakers-summary"), "the (empty) speaker list")

    # 2. Enroll spk1 from two microphone recordings.
    find("enroll-name").send_keys("Speaker One")
    find("enroll-id").send_keys("spk1")
    record("enroll", 4.0, 1)
    record("enroll", 3.0, 2)
    shot("02-enroll-two-recordings")
    find("enroll-submit").click()
    wait_for(lambda: "Enrolled Speaker One" in text_of("enroll-summary"), "enrollment of spk1")
    meter = text_of("enroll-meter")
    assert "Net speech enrolled" in meter and "Searchable" in meter, meter
    assert "2 recording(s)" in text_of("enroll-summary")
    shot("03-enrolled-by-microphone", focus="enroll-result")

    # 3. Enroll spk2 from files (the file input the drop zone wraps).
    find("enroll-name").clear()
    find("enroll-name").send_keys("Speaker Two")
    find("enroll-id").clear()
    find("enroll-id").send_keys("spk2")
    files = [str(SAMPLES / f"spk2_snt{i}.wav") for i in (1, 2, 3)]
    find("enroll-files").send_keys("\n".join(files))
    find("enroll-submit").click()
    wait_for(lambda: "Enrolled Speaker Two" in text_of("enroll-summary"), "enrollment of spk2")
    wait_for(lambda: "2 speaker(s)" in text_of("speakers-summary"), "both speakers listed")

    # 4. Identify spk1 from a recording that was not enrolled.
    find("identify-files").send_keys(str(SAMPLES / "spk1_snt3.wav"))
    find("identify-submit").click()
    wait_for(lambda: text_of("identify-decision"), "the identification")
    decision = find("identify-decision")
    assert decision.text == "This is Speaker One.", text_of("identify-result")
    assert "match" in decision.get_attribute("class").split()
    rows = driver.find_elements(By.CSS_SELECTOR, "#identify-table tbody tr")
    assert rows and "spk1" in rows[0].text and "yes" in rows[0].text
    shot("04-identified-from-file", focus="identify-result")

    # 5. Identify from the microphone. The page clears the last answer as the click is handled,
    # so the answer waited for is the new one.
    record("identify", 3.0, 1)
    find("identify-submit").click()
    wait_for(lambda: text_of("identify-decision"), "the identification by microphone")
    assert text_of("identify-decision") == "This is Speaker One.", text_of("identify-result")
    shot("05-identified-from-microphone", focus="identify-result")

    # 6. Rename spk2, then delete it (the delete button asks once more in place).
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-id="spk2"]')
    row.find_element(By.XPATH, ".//button[text()='Rename']").click()
    name_input = driver.find_element(By.CSS_SELECTOR, 'tr[data-id="spk2"] input.rename-input')
    name_input.clear()
    name_input.send_keys("Speaker Deux")
    driver.find_element(By.CSS_SELECTOR, 'tr[data-id="spk2"] button.rename-save').click()
    wait_for(
        lambda: "Speaker Deux" in driver.find_element(By.CSS_SELECTOR, 'tr[data-id="spk2"]').text,
        "the renamed row",
    )
    shot("06-renamed", focus="speakers-table")
    delete = driver.find_element(By.CSS_SELECTOR, 'tr[data-id="spk2"] button.danger')
    delete.click()
    assert delete.text == "Really delete?"
    delete.click()
    wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, 'tr[data-id="spk2"]'), "deletion")
    wait_for(lambda: "1 speaker(s)" in text_of("speakers-summary"), "one speaker left")
    shot("07-after-delete", focus="speakers-table")

    # What the page did is what the service holds.
    headers = {"X-API-Key": ADMIN_KEY}
    listed = httpx.get(f"{server.base_url}/speakers", headers=headers, timeout=30).json()
    assert [(s["id"], s["name"], s["utterance_count"]) for s in listed["speakers"]] == [
        ("spk1", "Speaker One", 2)
    ]
    assert httpx.get(f"{server.base_url}/speakers/spk2", headers=headers).status_code == 404
    # …and what /metrics counted (one worker, in the multiprocess mode serve always uses).
    text = httpx.get(f"{server.base_url}/metrics", headers=headers, timeout=30).text
    total = "voicesearch_http_requests_total"
    assert value(text, total, route="/speakers", method="POST", status="201") == 2
    assert value(text, total, route="/find-match", status="200") == 2
    assert value(text, total, route="/speakers/{speaker_id}", method="PATCH", status="200") == 1
    assert value(text, total, route="/speakers/{speaker_id}", method="DELETE", status="200") == 1
    assert value(text, total, route="/", status="200") == 1
    # Each wideband enrollment clip is embedded twice (as uploaded, and through the telephone
    # chain for its telephone-band profile: issue 12); each probe once.
    assert value(text, "voicesearch_inference_seconds_count", stage="embedding") == 2 * (2 + 3) + 2


def test_missing_browser_fails_where_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """The skip-or-fail rule itself (cheap: no browser started)."""
    monkeypatch.setattr(f"{__name__}.missing_browser", lambda: "no chromium")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("VOICESEARCH_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        require_browser()
    monkeypatch.setenv("VOICESEARCH_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="must run here"):
        require_browser()
