"""Headless Chromium for the dashboard: Debian's `chromium` and `chromium-driver` (which
`make test` installs when missing), driven by Selenium with no driver downloads."""

import contextlib
import shutil
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = None if CHROMIUM and CHROMEDRIVER else (
    "Debian's chromium and chromium-driver are not installed and `make test` could not install them "
    "(apt-get needs root and the Debian archive): the dashboard is not tested in a browser here")


@contextlib.contextmanager
def chromium(width=1280, height=900):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_dashboard(driver, port, user="guest", password="guest", refresh=1):
    """Load the page afresh and log in; returns once the user's name shows in the header."""
    url = f"http://127.0.0.1:{port}/?refresh={refresh}"
    driver.get(url)
    driver.execute_script("sessionStorage.clear()")     # whoever logged in before is forgotten
    driver.get(url)
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()
    wait_until(lambda: driver.find_element(By.ID, "whoami").text.startswith(user))


def wait_until(condition, timeout=15.0):
    """The condition's first truthy value; exceptions (an element not there yet) count as falsy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:     # noqa: BLE001 - the page is still changing
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"the page did not get there within {timeout} s (last error: {last!r})")


def console_errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
