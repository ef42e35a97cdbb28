"""Debian's headless chromium driven through selenium and chromium-driver.

Nothing is downloaded at test time: selenium is told where the system chromium and
chromedriver are (selenium-manager is never consulted). Each browser gets a fresh, empty
profile directory, no background networking (no update checks, no safe-browsing or sync
traffic), so the only traffic is the test's own.

To browse as a customer in a test network namespace, :func:`run_in_netns` runs a small
script in that namespace: selenium, chromedriver and chromium then all live there, and the
browser's DNS queries and connections leave from the customer's address.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--no-first-run", "--no-default-browser-check",
         "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
         "--metrics-recording-only", "--password-store=basic")


def missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is not installed (tests/run-all.sh installs chromium and chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@contextmanager
def chromium(*, lang: str = "en-US", page_load_timeout: float = 30) -> Iterator:
    """A selenium WebDriver on a fresh headless chromium; quit (and its profile removed) at exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="nocpolicy-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--lang={lang}")
    opts.add_experimental_option("prefs", {"intl.accept_languages": lang})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(page_load_timeout)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def run_in_netns(netns: str, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a Python ``script`` (source text) inside ``netns`` with this module importable, so it
    can use :func:`chromium` as a customer in that namespace would; its stdout is returned.
    Chromedriver and chromium then resolve and connect from the namespace's addresses."""
    here = str(Path(__file__).resolve().parent)
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": here, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp"})
