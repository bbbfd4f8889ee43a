"""The ops board in a real browser: Debian's chromium, headless, driven by Playwright.

Usage: check.py BASE APPROVER_TOKEN VIEWER_TOKEN SHOTS_DIR

Run by engine/tests/engine/board.rs against an engine it started and filled: `shop:s1` is
stuck (paid, its SLA of 1 s passed), `shop:a1` waits for an intercept approval (one approver).
Asserts what the pages render, that updates arrive without a reload, that deciding in the
service view changes the order, that the views work at 360 px and 1920 px and by keyboard, and
that the console stays free of errors. Saves a screenshot of each view in SHOTS_DIR.
"""

import json
import sys
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE, APPROVER, VIEWER, SHOTS = sys.argv[1:5]
# The flags a root user in a closed network needs (no sandbox; no calls home).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
errors = []


def api(method, path, token, body=None):
    request = urllib.request.Request(
        BASE + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": "Bearer " + token, "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def watch(page):
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))


def check(condition, message):
    if not condition:
        raise AssertionError(message)


with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
    # The wall screen: floor view, viewer token, English.
    wall = browser.new_page(viewport={"width": 1920, "height": 1080}, locale="en-US")
    watch(wall)
    wall.goto(f"{BASE}/board?view=floor&token={VIEWER}")
    stuck = wall.wait_for_selector('[data-order="shop:s1"]', timeout=15000)
    check("overdue" in stuck.inner_text(), f"the stuck order says how overdue: {stuck.inner_text()}")
    check(wall.inner_text("#status") == "live", "the stream is live")
    wall.screenshot(path=f"{SHOTS}/floor.png", full_page=True)
    # A hold made elsewhere appears without a reload.
    wall.evaluate("window.__sameDocument = true")
    api("POST", "/v1/orders/shop:s1/hold", APPROVER, {"reason": "address check"})
    # (Waits use locators: the page's Content-Security-Policy forbids eval, as it should.)
    expect(wall.locator("#holds-floor")).to_contain_text("address check", timeout=5000)
    check(wall.evaluate("window.__sameDocument === true"), "no reload happened")
    wall.screenshot(path=f"{SHOTS}/floor-hold.png", full_page=True)

    # Chinese labels, by the toggle.
    wall.click("#lang")
    check(wall.inner_text("header h1") == "订单中台", "Chinese title after the toggle")
    check("已发货未揽收" in wall.inner_text("#floor"), "Chinese floor labels")
    wall.click("#lang")

    # Settings: the wall-screen link of a viewer token, and its QR code (served by the engine).
    wall.click("#settings-toggle")
    wall.fill("#viewer-token", VIEWER)
    check(f"token={VIEWER}" in wall.inner_text("#wall-link"), "the wall-screen link")
    qr = wall.locator("#qr")
    expect(qr).to_be_visible(timeout=5000)
    for _ in range(50):
        if qr.evaluate("img => img.complete && img.naturalWidth >= 240"):
            break
        wall.wait_for_timeout(100)
    else:
        raise AssertionError("the QR code did not load")
    wall.screenshot(path=f"{SHOTS}/settings.png")
    wall.click("#settings-toggle")

    # Keyboard: the flow view by Tab and Enter.
    wall.focus('nav a[data-view="floor"]')
    wall.keyboard.press("Tab")
    wall.keyboard.press("Tab")
    wall.keyboard.press("Enter")
    wall.wait_for_selector("#flow:not([hidden])", timeout=5000)
    wall.wait_for_selector("#heat table", timeout=10000)
    check("shop" in wall.inner_text("#heat"), "the heat map has the shop channel")
    wall.screenshot(path=f"{SHOTS}/flow.png", full_page=True)

    # Customer service on a phone: approve the intercept.
    phone = browser.new_page(viewport={"width": 360, "height": 740}, locale="zh-CN")
    watch(phone)
    phone.goto(f"{BASE}/board?view=service&token={APPROVER}")
    item = phone.wait_for_selector('[data-approval^="shop:a1:intercept:"]', timeout=10000)
    check("shop:a1" in item.inner_text(), "the approval names its order")
    width = phone.evaluate("document.documentElement.scrollWidth")
    check(width <= 360, f"no sideways scrolling on a 360 px phone ({width} px)")
    phone.screenshot(path=f"{SHOTS}/service.png", full_page=True)
    item.query_selector("button").click()
    expect(phone.locator('[data-approval^="shop:a1:intercept:"]')).to_have_count(0, timeout=5000)
    order = api("GET", "/v1/orders/shop:a1", APPROVER)
    check(order["state"] == "intercepted", f"approved in the service view: {order['state']}")
    # Find the order by its waybill and see its timeline.
    phone.fill("#search-key", "SF1402399417601")
    phone.press("#search-key", "Enter")
    expect(phone.locator("#found")).to_contain_text("intercepted", timeout=5000)
    browser.close()

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print("board ok")
