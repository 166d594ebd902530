"""Headless Chromium for the console's browser tests: Debian's ``chromium`` and
``chromium-driver``, installed with apt when missing (the machine's package registry is
reachable; as root, or with password-less sudo), driven by Selenium."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGES = ("chromium", "chromium-driver")
BINARIES = ("chromium", "chromedriver")


def _apt(*args: str) -> subprocess.CompletedProcess:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run([*sudo, "apt-get", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing both when one is missing."""
    if not all(shutil.which(b) for b in BINARIES):
        done = _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES)
        if done.returncode != 0:  # stale package lists: read them again once
            _apt("update", "-q")
            done = _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES)
        if done.returncode != 0:
            pytest.fail(f"the browser tests need Debian's {' and '.join(PACKAGES)}; "
                        f"`apt-get install {' '.join(PACKAGES)}` failed:\n{done.stderr[-2000:]}")
    chromium, driver = (shutil.which(b) for b in BINARIES)
    return chromium, driver


def start_browser(width: int = 1280, height: int = 1000):
    """A headless Chromium session whose console messages can be read back."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions",
                "--no-first-run", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def screenshot_dir() -> Path:
    """Where the tests write the console's screenshots (README embeds copies from here)."""
    folder = Path(os.environ.get("MAAS_SCREENSHOTS", Path(__file__).resolve().parents[1]
                                 / "bench" / "out" / "console"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
