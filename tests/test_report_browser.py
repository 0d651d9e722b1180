"""The HTML report in headless Chromium: renders, every image loads, no request leaves.

Two independent checks that nothing is fetched: (1) the page's own CSP
(``default-src 'none'``) plus its check script, which counts CSP violations into the DOM;
(2) Chromium is pointed at a local recording proxy for every scheme and host (loopback
included): any request the page made would arrive there. Chromium itself still calls a
few of its own service endpoints (component updater, network time, sign-in) whatever the
flags say; those hosts, and only those, are ignored. A negative control page with an
external image shows that both checks can fail.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from bench.report import html as report_html
from bench.report.build import build_report, write_report
from bench.report.synthetic import Synthetic, write_synthetic

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium)"),
]


# Chromium's own background calls (not the page's); seen with Debian's chromium 156.
CHROMIUM_SERVICE_HOSTS = {
    "update.googleapis.com",
    "accounts.google.com",
    "clients2.google.com",
    "clientservices.googleapis.com",
    "optimizationguide-pa.googleapis.com",
    "safebrowsing.googleapis.com",
}


IDLE = "(connection, no request)"


def page_requests(requests: list[str]) -> list[str]:
    """Requests that are not Chromium's own service calls."""
    out = []
    for line in requests:
        if line == IDLE:  # a pre-connected socket that never carried a request
            continue
        m = re.match(r"[A-Z]+ (?:https?://)?([^/:\s]+)", line)
        if not (m and m.group(1) in CHROMIUM_SERVICE_HOSTS):
            out.append(line)
    return out


class RecordingProxy:
    """Accepts connections on loopback and records the first line of each request."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                # Chromium may open a spare socket to its proxy ahead of need (preconnect)
                # and send nothing on it: that is no request, and is recorded as IDLE.
                conn.settimeout(3.0)
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                self.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1") or IDLE)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def chromium(args: list[str], tmp_path: Path, proxy_port: int) -> subprocess.CompletedProcess:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-pings",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--proxy-server=http://127.0.0.1:{proxy_port}",
        "--proxy-bypass-list=<-loopback>",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def render_check(dom: str) -> dict[str, str]:
    m = re.search(r'<div id="render-check"[^>]*>', dom)
    assert m, "check element missing from the DOM"
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', m.group(0)))


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("browser") / "sweep"
    write_synthetic(
        folder,
        Synthetic(
            shapes=((1, 1), (4, 1), (16, 1), (16, 4), (64, 1)),
            seeds=(0, 1),
            oom_above=32,
            workload="mlp <i>&amp;</i> | x",
        ),
    )
    rep = build_report(folder)
    write_report(rep, folder / "report")
    return folder / "report" / "index.html"


def test_page_renders_images_load_nothing_leaves(report_page, tmp_path):
    figures = len(list((report_page.parent / "figures").glob("*.png")))
    with RecordingProxy() as proxy:
        r = chromium(["--dump-dom", report_page.as_uri()], tmp_path, proxy.port)
    assert r.returncode == 0, r.stderr[-2000:]
    check = render_check(r.stdout)
    assert check["ready"] == "1"
    assert int(check["images"]) == figures == 6
    assert check["images-loaded"] == check["images"]
    assert check["csp-violations"] == "0"
    assert page_requests(proxy.requests) == []
    assert "<h1>bench report</h1>" in r.stdout and "<table>" in r.stdout
    assert "mlp &lt;i&gt;&amp;amp;&lt;/i&gt; | x" in r.stdout  # escaped, shown as text


@pytest.fixture(scope="module")
def wide_page(tmp_path_factory) -> Path:
    """A report whose labels and settings are long: long option values that vary."""
    folder = tmp_path_factory.mktemp("browser-wide") / "sweep"
    for note in ("a-long-option-value-" * 6, "another-long-option-value-" * 6):
        write_synthetic(
            folder,
            Synthetic(
                shapes=((1, 1), (16, 1), (16, 4)),
                seeds=(0,),
                extra_config={"workload_options": {"note": note}, "data_path": "dataloader"},
            ),
        )
    rep = build_report(folder)
    write_report(rep, folder / "report")
    return folder / "report" / "index.html"


def test_page_is_no_wider_than_a_1280_px_window(wide_page, tmp_path):
    with RecordingProxy() as proxy:
        r = chromium(
            ["--dump-dom", "--window-size=1280,1000", wide_page.as_uri()], tmp_path, proxy.port
        )
    assert r.returncode == 0, r.stderr[-2000:]
    check = render_check(r.stdout)
    assert check["ready"] == "1" and check["csp-violations"] == "0"
    assert int(check["inner-width"]) == 1280
    assert int(check["scroll-width"]) <= int(check["inner-width"]), check


def test_negative_control_detects_requests_and_broken_images(tmp_path):
    """A page like the report but with an external image and a broken one: the checks fail."""
    page = report_html.page(title="control", meta=[], figures=[], tables=[], notes=[])
    page = page.replace(
        '<div id="render-check"',
        '<img src="http://example.invalid/x.png"><img src="data:image/png;base64,AAAA">'
        '<div id="render-check"',
    )
    with_csp = tmp_path / "with_csp.html"
    with_csp.write_text(page)
    no_csp = tmp_path / "no_csp.html"
    no_csp.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page))
    with RecordingProxy() as proxy:
        r = chromium(["--dump-dom", with_csp.as_uri()], tmp_path, proxy.port)
        check = render_check(r.stdout)
        assert check["images"] == "2" and check["images-loaded"] == "0"
        assert int(check["csp-violations"]) >= 1
        assert page_requests(proxy.requests) == []  # the CSP blocked it before the network
        chromium(["--dump-dom", no_csp.as_uri()], tmp_path / "2", proxy.port)
    assert any("example.invalid" in req for req in page_requests(proxy.requests)), proxy.requests


def test_screenshot(report_page, tmp_path):
    shot = tmp_path / "shot.png"
    with RecordingProxy() as proxy:
        r = chromium(
            [f"--screenshot={shot}", "--window-size=1280,2400", report_page.as_uri()],
            tmp_path,
            proxy.port,
        )
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 2400)
    assert len(data) > 50_000  # tables and figures drawn, not a blank page
    assert page_requests(proxy.requests) == []
