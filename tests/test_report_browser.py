"""The report in headless Chromium: it renders, every image loads, and it fetches nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from support.chain import Chain, Interpreted, build_report_chain

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
]
# Everything Chromium would fetch on its own (updates, sync, field trials) is switched off, so
# that any request in the net log comes from the page.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
WINDOW = (1280, 2000)
# Appended to a copy of the page: once loaded, it writes what the browser saw into the DOM.
PROBE = """<script>
addEventListener("load", () => {
  const images = [...document.images];
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: images.length,
    loaded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    widths: images.map((i) => i.naturalWidth),
    resources: performance.getEntriesByType("resource").map((e) => e.name),
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    clipped: [...document.querySelectorAll(".table-wrap")]
      .filter((w) => w.scrollWidth > w.clientWidth + 1)
      .map((w) => (w.querySelector("table") || {}).id || "?"),
  });
  document.body.append(probe);
});
</script>"""


@pytest.fixture(scope="module")
def chain(interpreted: Interpreted, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return build_report_chain(interpreted, tmp_path_factory.mktemp("report-browser"))


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    command = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked the network for, from Chromium's net log.

    Chromium itself still calls home in headless mode (time, accounts); those requests have no
    origin ("not an origin"). A page's requests carry its origin ("null" for a file:// page).
    Files and data: URIs never reach the network stack, so a self-contained page logs none.
    """
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job
        and "url" in event.get("params", {})
        and event["params"].get("initiator") != "not an origin"
    ]


def render(tmp: Path, url: str) -> tuple[Path, list[str], str]:
    """A screenshot of the page and the requests it made."""
    shot, netlog = tmp / "page.png", tmp / "netlog.json"
    done = chromium(
        tmp,
        f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--log-net-log={netlog}",
        url,
    )
    assert shot.is_file() and netlog.is_file(), done.stderr[-2000:]
    return shot, page_requests(netlog), done.stderr


def test_the_network_check_sees_a_page_that_fetches(tmp_path: Path) -> None:
    control = tmp_path / "control.html"
    control.write_text(
        '<!DOCTYPE html><p>control</p><img src="http://127.0.0.1:9/probe.png">'
        '<link rel="stylesheet" href="https://fonts.example.invalid/x.css">'
    )
    _, requests, _ = render(tmp_path, control.as_uri())
    assert sorted(requests) == [
        "http://127.0.0.1:9/probe.png",
        "https://fonts.example.invalid/x.css",
    ]


@pytest.mark.parametrize("which", ["run_page", "compare_page"])
def test_page_renders_and_requests_nothing(chain: Chain, which: str, tmp_path: Path) -> None:
    page: Path = getattr(chain, which)
    shot, requests, _ = render(tmp_path, page.as_uri())
    assert requests == []
    with Image.open(shot) as image:
        assert image.size == WINDOW
        grey = image.convert("L")
        # A blank or failed page is one colour; a rendered report has text, tables and figures.
        assert grey.getextrema()[0] < 60 and len(set(grey.getdata())) > 20


@pytest.mark.parametrize("which", ["run_page", "plain_page", "compare_page"])
def test_every_image_loads(chain: Chain, which: str, tmp_path: Path) -> None:
    page: Path = getattr(chain, which)
    text = page.read_text(encoding="utf-8")
    # The page's own policy forbids scripts; the probed copy allows inline ones and nothing else.
    probed = text.replace("default-src 'none'", "default-src 'none'; script-src 'unsafe-inline'")
    probed = probed.replace("</body>", PROBE + "</body>")
    copy = tmp_path / page.name
    copy.write_text(probed, encoding="utf-8")
    done = chromium(
        tmp_path,
        "--dump-dom",
        "--virtual-time-budget=10000",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        copy.as_uri(),
    )
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, done.stderr[-2000:]
    seen = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    expected = text.count("<img ")
    assert seen["images"] == seen["loaded"] == expected
    assert all(width > 0 for width in seen["widths"])
    assert seen["resources"] == []
    assert seen["overflow"] <= 0  # nothing wider than a laptop window
    assert seen["clipped"] == []  # and no table scrolls sideways inside it


def test_page_prints(chain: Chain, tmp_path: Path) -> None:
    pdf = tmp_path / "page.pdf"
    done = chromium(
        tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", chain.run_page.as_uri()
    )
    assert pdf.is_file(), done.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", data))
    # Each of the four sections starts a printed page, after the headline's.
    assert pages >= 5
