"""The web page in headless Chromium (Debian's package, driven by Playwright; never a browser
download): type a prompt, see the article, image and audio appear, and the job in the history.
A screenshot is kept in the test's temp folder."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import pytest

from genlab.serve import ServerConfig, ServerThread, create_app

from .test_studio_helpers import gan_run  # noqa: F401  (fixture)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def served_page(cfg: ServerConfig, width: int, height: int):
    """A real server on loopback and a headless-Chromium page; yields (server, page, page errors)."""
    playwright = pytest.importorskip("playwright.sync_api")
    with ServerThread(create_app(cfg)) as srv, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield srv, page, errors
        finally:
            browser.close()


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed")
def test_page_makes_a_bundle_and_lists_it(trained_run, gan_run, tmp_path):  # noqa: F811
    cfg = ServerConfig(text_run=trained_run, image_run=gan_run, data_dir=tmp_path / "data", api_key="k", device="cpu",
                       semantic_labels=False, speech_backend="espeak")
    with served_page(cfg, 1100, 1000) as (srv, page, errors):
        page.goto(srv.url + "/")
        page.fill("#apikey", "k")
        page.fill("#prompt", "A triangle on the hill")
        page.fill("#max_tokens", "25")
        page.click("#go")
        page.wait_for_selector("#download:not([hidden])", timeout=90_000)
        assert page.locator("#title").inner_text() == "A triangle on the hill"
        assert page.locator("#article").inner_text().strip()
        # The picture really loaded (natural size > 0) and the audio has a source and a duration.
        page.wait_for_function("document.getElementById('illustration').naturalWidth > 0", timeout=10_000)
        page.wait_for_function("document.getElementById('narration').duration > 0", timeout=10_000)
        assert [page.locator(f"#stages li[data-stage={s}]").get_attribute("class")
                for s in ("text", "illustration", "narration", "music", "bundle")] == \
            ["done", "done", "done", "skipped", "done"]
        page.wait_for_selector("#history li", timeout=10_000)
        assert "A triangle on the hill" in page.locator("#history").inner_text()
        assert "done" in page.locator("#history li").first.inner_text()
        page.screenshot(path=str(tmp_path / "studio-page.png"), full_page=True)
        assert (tmp_path / "studio-page.png").stat().st_size > 10_000
        assert not errors, errors
