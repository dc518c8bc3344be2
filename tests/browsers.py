"""Browsers for the web page tests: headless Chromium over Debian's chromedriver (Firefox: tests/bidi.py).

A missing browser is a failure, never a skip: scripts/test.sh installs chromium, chromium-driver
and firefox-esr.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


class BrowserMissing(AssertionError):
    """A browser or its driver is not installed."""


def require(*paths_and_packages: tuple[Path, str]) -> None:
    """Fail with the Debian package to install for each path that does not exist."""
    missing = [f"{path} is missing (apt-get install {package}; scripts/test.sh does)"
               for path, package in paths_and_packages if not path.exists()]
    if missing:
        raise BrowserMissing("; ".join(missing))


@contextmanager
def chromium(flags: Sequence[str], *, binary: Path = CHROMIUM, driver: Path = CHROMEDRIVER) -> Iterator[Any]:
    """A selenium driver for headless Chromium started with ``flags`` and a fresh profile.

    The profile directory is also the browser's ``HOME`` (Chromium keeps ``~/.pki`` and caches
    there), so nothing is written to the test's own ``HOME``. Browser console logs are kept.
    """
    require((binary, "chromium"), (driver, "chromium-driver"))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="streamgw-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(binary)
        for flag in flags:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=str(driver), env={**os.environ, "HOME": profile})
        browser = webdriver.Chrome(options=options, service=service)
        try:
            browser.set_page_load_timeout(30)
            browser.set_script_timeout(10)
            yield browser
        finally:
            browser.quit()
