"""Headless Chromium (Debian's `chromium` package) for tests and benchmarks: load a file URL, dump
the DOM after scripts ran, take a screenshot, and record the network log.

`page_requests(netlog)` lists the URL requests a page initiated. The browser's own background
requests (component updates, time sync, accounts) have the initiator "not an origin" and are
not the page's; the flags below already switch most of them off, and the host resolver maps
every name to nothing, so nothing leaves the machine either way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-domain-reliability", "--disable-breakpad",
         "--disable-client-side-phishing-detection", "--disable-features=SpellCheck,Translate,MediaRouter",
         "--host-resolver-rules=MAP * ~NOTFOUND")


def chromium() -> str | None:
    """The chromium binary, or None when the `chromium` package is not installed."""
    return shutil.which("chromium")


@dataclass
class Loaded:
    dom: str
    seconds: float  # wall time of the browser process
    netlog: Path


def load(url: str, work: Path, *, screenshot: Path | None = None, window: str = "1600,1200",
         timeout: float = 120.0) -> Loaded:
    """Load `url` in a fresh profile under `work`; the DOM as serialized after the page's scripts."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    work.mkdir(parents=True, exist_ok=True)
    netlog = work / "netlog.json"
    args = [binary, *FLAGS, f"--user-data-dir={work / 'profile'}", f"--window-size={window}",
            "--virtual-time-budget=5000"]
    started = time.monotonic()
    dom = subprocess.run([*args, f"--log-net-log={netlog}", "--dump-dom", url], capture_output=True, text=True,
                         timeout=timeout, check=True)
    seconds = time.monotonic() - started
    if screenshot is not None:
        subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=timeout,
                       check=True)
    return Loaded(dom.stdout, seconds, netlog)


def page_requests(netlog: Path) -> list[str]:
    """URLs of requests the page (any origin, `null` for file pages) initiated."""
    data = json.loads(netlog.read_text())
    start_job = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    out = []
    for event in data["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and "url" in params and params.get("initiator") != "not an origin":
            out.append(params["url"])
    return out
