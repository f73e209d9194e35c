"""The HTML report in a real headless Chromium: it renders (a non-blank screenshot) and every figure decodes.

Skipped only when no Chromium binary is installed (`apt-get install chromium-headless-shell`, as .ci/run does).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from test_cli import run
from test_report import _pngs

BROWSER = next((shutil.which(b) for b in ("chromium-headless-shell", "chromium", "google-chrome") if shutil.which(b)),
               None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (apt-get install chromium-headless-shell)")

# appended to a copy of the report: after load, each <img> records the size the browser decoded it to
PROBE = ("<script>window.addEventListener('load', () => { for (const im of document.images) "
         "im.setAttribute('data-decoded', im.complete ? im.naturalWidth + 'x' + im.naturalHeight : 'pending'); });"
         "</script>")


def _browser(tmp_path, *args) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, (cmd, p.stderr[-2000:])
    return p


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))


def test_report_renders_in_headless_chromium(base_store, shapes_dir, tmp_path):
    report = tmp_path / "report.html"
    run("inspect", base_store, "--report", report, "--data", shapes_dir, "--quiet")
    figures = _pngs(report.read_text())  # alt -> the figure as it was written

    shot = tmp_path / "shot.png"
    _browser(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri())
    im = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
    assert im.shape == (3000, 1200, 3)
    assert im.std() > 20  # not blank
    assert len(np.unique(im.reshape(-1, 3), axis=0)) > 500  # figures (many colours), not only text on white

    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = _browser(tmp_path, "--dump-dom", "--virtual-time-budget=10000", probe.as_uri()).stdout
    parser = _Images()
    parser.feed(dom)
    decoded = {i["alt"]: i.get("data-decoded") for i in parser.imgs}
    assert list(decoded) == list(figures)  # every figure of the report is an <img> in the DOM
    for alt, fig in figures.items():
        w, h = (int(v) for v in re.fullmatch(r"(\d+)x(\d+)", decoded[alt]).groups())
        assert (h, w) == fig.shape and w > 0 and h > 0, (alt, decoded[alt], fig.shape)
