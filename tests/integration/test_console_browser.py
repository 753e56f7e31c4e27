"""The approval console in a real headless Chromium (Debian's chromium + chromedriver via
Selenium) against a real guard: a held push appears, is approved by clicking, and the devices
receive it. What the agent sent is shown as text, never run (XSS)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from simulator.broker import MosquittoBroker
from simulator.fleet import Fleet

from .admin_harness import FLOOR_1, FLOOR_1_PUSH, AdminGuard, admin_guard, held_id

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync",
)
# A card is rebuilt when its request changes (live events): waits look it up again.
RETRY = (StaleElementReferenceException,)
# An LLM-written field that would run script if the console ever used it as markup (a
# clientToken is free text of at most 64 bytes; it is held with the rest of the payload).
HOSTILE = "<img src=x onerror=__xss=1><script>__xss=2</script>"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def ag(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[AdminGuard]:
    with admin_guard(mosquitto, tmp_path) as guard:
        yield guard


def login(driver: WebDriver, ag: AdminGuard, token: str) -> None:
    driver.get(ag.url + "/")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-button").click()


def card(driver: WebDriver, section: str, request_id: str, timeout: float = 20) -> WebElement:
    """The request's card in #pending or #recent, waited for (bounded)."""

    def find(d: WebDriver) -> WebElement | bool:
        for node in d.find_elements(By.CSS_SELECTOR, f"#{section} article.request"):
            if node.get_attribute("data-id") == request_id:
                return node
        return False

    found = WebDriverWait(driver, timeout, ignored_exceptions=RETRY).until(
        find, f"request {request_id} not in #{section}")
    assert isinstance(found, WebElement)
    return found


def text(node: WebElement, selector: str) -> str:
    return node.find_element(By.CSS_SELECTOR, selector).text


def test_a_held_push_is_approved_by_clicking_and_the_devices_receive_it(
    ag: AdminGuard, fleet: Fleet, browser: WebDriver
) -> None:
    login(browser, ag, ag.token("alice"))
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "who").text.startswith("alice"), "login failed")
    payload = {"firmware_channel": "beta", "clientToken": HOSTILE}
    with ag.agent() as ops:
        request_id = held_id(ops.publish(FLOOR_1_PUSH, payload).reason_string)

    # It appears without a reload (live events), with everything an approver needs.
    pending = card(browser, "pending", request_id)
    assert text(pending, ".agent") == "ops-agent"
    assert text(pending, ".tool") == "group_config_push"
    assert text(pending, ".topic") == FLOOR_1_PUSH
    assert "risk high" in text(pending, ".why")
    assert text(pending, ".devices") == f"5: {', '.join(FLOOR_1)}"
    assert text(pending, ".level") == "level 1"
    assert text(pending, ".left").endswith("s left")
    row = pending.find_element(By.CSS_SELECTOR, "table.diff tr.change")
    assert [td.text for td in row.find_elements(By.TAG_NAME, "td")] == [
        "firmware_channel", "unknown", '"beta"', "high"]
    # The hostile string is shown as the text it is: no element made of it, nothing ran.
    pending.find_element(By.CSS_SELECTOR, "details summary").click()
    assert json.loads(text(pending, "pre.payload"))["clientToken"] == HOSTILE
    assert browser.find_elements(By.CSS_SELECTOR, "article img, article script") == []
    assert browser.execute_script("return window.__xss === undefined") is True

    pending.find_element(By.CSS_SELECTOR, "input.reason").send_keys("change window open")
    pending.find_element(By.CSS_SELECTOR, "button.approve").click()

    # The guard carries it out; the card moves to Recent and follows the rollout live.
    done = WebDriverWait(browser, 40, ignored_exceptions=RETRY).until(
        lambda d: (c := card(d, "recent", request_id)) and text(c, ".status") == "DONE" and c,
        "the approved request did not reach done in the console")
    assert isinstance(done, WebElement)
    assert "succeeded 5" in text(card(browser, "recent", request_id), ".rollout summary")
    for name in FLOOR_1:
        fleet.device("acme", name.split("/")[1]).wait_until(
            lambda d: d.config["firmware_channel"] == "beta", 10, "the approved change")
    view = ag.wait_view(request_id, lambda v: True)
    assert ("alice", "approved", "change window open") in [
        (h["who"], h["action"], h["reason"]) for h in view["history"]]
    assert browser.execute_script("return window.__xss === undefined") is True


def test_the_console_refuses_an_agent_token_and_a_denial_without_reason(
    ag: AdminGuard, fleet: Fleet, browser: WebDriver
) -> None:
    login(browser, ag, ag.token("ops-agent", role="agent"))
    WebDriverWait(browser, 10).until(
        lambda d: "agent token" in d.find_element(By.ID, "login-error").text,
        "an agent token was not refused")
    assert browser.find_element(By.ID, "console").is_displayed() is False

    with ag.agent() as ops:
        request_id = held_id(ops.publish(FLOOR_1_PUSH, {"firmware_channel": "beta"})
                             .reason_string)
    # bob decides at level 2: the level-1 request offers him no buttons, only who decides.
    login(browser, ag, ag.token("bob"))
    pending = card(browser, "pending", request_id)
    assert text(pending, ".not-yours") == (
        "waiting for level 1 (alice): you decide at level 2")
    assert pending.find_elements(By.CSS_SELECTOR, "button") == []
    browser.find_element(By.ID, "logout").click()
    login(browser, ag, ag.token("alice"))
    pending = card(browser, "pending", request_id)
    pending.find_element(By.CSS_SELECTOR, "button.deny").click()
    assert text(pending, ".action-error") == "give a reason to deny"
    assert ag.wait_view(request_id, lambda v: True)["status"] == "pending"
    pending.find_element(By.CSS_SELECTOR, "input.reason").send_keys("not during the audit")
    pending.find_element(By.CSS_SELECTOR, "button.deny").click()
    WebDriverWait(browser, 20, ignored_exceptions=RETRY).until(
        lambda d: text(card(d, "recent", request_id), ".status") == "DENIED",
        "the denial did not show")
    assert text(card(browser, "recent", request_id), ".outcome") == "not during the audit"
    assert ag.wait_view(request_id, lambda v: True)["status"] == "denied"
    assert fleet.device("acme", "therm-001").config["firmware_channel"] == "stable"
