"""The page's files are served from the package, offline, and the page needs no key."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.api.routes.page import STATIC_DIR


def test_page_and_assets_are_served_without_a_key(keyed_client: TestClient) -> None:
    page = keyed_client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    html = page.text
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert sorted(assets) == ["/static/live.js", "/static/page.css", "/static/page.js"]
    for asset in assets:
        response = keyed_client.get(asset)
        assert response.status_code == 200, asset
        assert response.content == (STATIC_DIR / asset.removeprefix("/static/")).read_bytes()
    assert keyed_client.get("/static/page.js").headers["content-type"].split(";")[0] in (
        "text/javascript",
        "application/javascript",
    )
    # The data behind the page still needs the key.
    assert keyed_client.get("/speakers").status_code == 401
    assert keyed_client.get("/static/nothing.js").status_code == 404
    assert keyed_client.get("/static/../service/app.py").status_code == 404


def test_the_page_loads_nothing_from_elsewhere() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        # No CDN, fonts or analytics: every URL the page uses is on this origin.
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), path.name
