"""The dashboard end to end, in real headless Chromium, against a running demo host.

    python3 tests/browser/dashboard.py <demo_host binary> <screenshot dir>

It starts the demo host on a fresh file (or on the empty PostgreSQL database that
CAIRN_DEMO_DB names) and a free port (no sample stream), and as a person would:
  1. signs in as the operator, opens the instance list, starts an order through the
     API, and sees it appear and move to `completed` without the page reloading;
  2. opens the order and finds its timeline (stock, payment, the warehouse wait,
     shipping), its history, and a document attached to it through the API;
  3. signs in as an approver, opens an expense task from the inbox, claims it, submits
     the form empty and sees the validation errors next to the fields, then decides it
     and sees the task completed;
  4. opens the orders' process map and finds their steps in it, and saves the BPMN of
     the orders and the expenses beside the screenshots;
  5. opens the orders' report;
  6. selects two waiting orders in the list, counts them with a batch dry run, cancels
     both in one batch, and finds the batch named in each history with its actor;
  7. saves the list's filters as a view shared with the operators.
A screenshot of each page goes to the screenshot directory. Exits non-zero on any
failure, after saving a screenshot of where it failed.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

HOST, SHOTS = sys.argv[1], sys.argv[2]
os.makedirs(SHOTS, exist_ok=True)
work = tempfile.mkdtemp(prefix="cairn-dashboard-")
tokens_file = os.path.join(work, "tokens.json")
# CAIRN_DEMO_DB: a PostgreSQL connection string to run the host on instead of a file.
database = os.environ.get("CAIRN_DEMO_DB") or os.path.join(work, "demo.redb")
host = subprocess.Popen(
    [HOST, "--db", database, "--port", "0", "--quiet",
     "--tokens-out", tokens_file],
    stdout=subprocess.PIPE, text=True)
base = None
for line in host.stdout:
    match = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+)/", line)
    if match:
        base = match.group(1)
        break
if base is None:
    sys.exit("the demo host did not print its address")
tokens = json.load(open(tokens_file))


def api(method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("authorization", "Bearer " + token)
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


options = webdriver.ChromeOptions()
for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1360,1000"]:
    options.add_argument(argument)
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
browser = webdriver.Chrome(
    service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)
wait = WebDriverWait(browser, 20)
step = 0


def shot(name):
    global step
    step += 1
    time.sleep(0.3)
    browser.save_screenshot(os.path.join(SHOTS, f"{step:02d}-{name}.png"))


def click(xpath):
    """Clicks what `xpath` finds, finding it again if a live refresh replaced it."""
    for _ in range(20):
        try:
            wait.until(ec.element_to_be_clickable((By.XPATH, xpath))).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{xpath} kept being replaced")


def sign_in(role):
    browser.get(base + "/")
    field = wait.until(ec.presence_of_element_located((By.ID, "token")))
    field.send_keys(tokens[role])
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid=who]"), ""))


try:
    # 1. An order appears and completes in the list, live.
    sign_in("operator")
    shot("overview")
    browser.get(base + "/#/instances?id=e2e")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".empty, table")))
    browser.execute_script("window.__notReloaded = true;")
    order = {"customer": "Ada Lovelace", "region": "north", "items": 2, "cents": 4200,
             "warehouse_secs": 2}
    api("POST", "/api/v1/instances", tokens["operator"],
        {"workflow_type": "shop_order", "id": "e2e-order", "input": order})
    # A document attached through the API while the order runs (an ended instance
    # takes none).
    note = urllib.request.Request(base + "/api/v1/instances/e2e-order/documents/delivery-note.txt",
                                  data=b"2 parcels, signed by A. Lovelace", method="POST")
    note.add_header("authorization", "Bearer " + tokens["operator"])
    note.add_header("content-type", "text/plain")
    with urllib.request.urlopen(note, timeout=10) as response:
        assert response.status == 201, response.status
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-id='e2e-order']")))
    shot("instance-listed")
    WebDriverWait(browser, 30).until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, "tr[data-id='e2e-order'] td[data-status='completed']")))
    assert browser.execute_script("return window.__notReloaded === true;"), "the page reloaded"
    shot("instance-completed-live")

    # 2. Its timeline, history and documents (a delivery note attached while it ran).
    browser.find_element(By.CSS_SELECTOR, "tr[data-id='e2e-order'] a").click()
    timeline = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=timeline]")))
    names = timeline.text
    for expected in ["reserve_stock", "charge", "sleep", "ship"]:
        assert expected in names, f"the timeline lacks {expected}: {names!r}"
    assert "WorkflowCompleted" in browser.find_element(By.CSS_SELECTOR, "table.events").text
    documents = browser.find_element(By.CSS_SELECTOR, "[data-testid=documents]").text
    assert "delivery-note.txt" in documents and "text/plain" in documents, documents
    shot("instance-timeline")

    # 3. An approver decides an expense through the form.
    expense = {"employee": "Grace Hopper", "purpose": "conference ticket", "cents": 45000}
    api("POST", "/api/v1/instances", tokens["operator"],
        {"workflow_type": "expense", "id": "e2e-expense", "input": expense})
    browser.find_element(By.XPATH, "//button[text()='Sign out']").click()
    sign_in("approver")
    browser.get(base + "/#/tasks")
    link = wait.until(ec.presence_of_element_located(
        (By.XPATH, "//table[@data-testid='tasks']//a[contains(., 'Grace Hopper')]")))
    shot("inbox")
    link.click()
    wait.until(ec.element_to_be_clickable((By.XPATH, "//button[text()='Claim']"))).click()
    form = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=decision-form]")))
    shot("task-claimed")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    error = wait.until(ec.visibility_of_element_located(
        (By.CSS_SELECTOR, "[data-error-for=approve]")))
    wait.until(lambda _: error.text.strip() != "")
    shot("task-validation-error")
    Select(browser.find_element(By.ID, "field-approve")).select_by_visible_text("Yes")
    browser.find_element(By.ID, "field-note").send_keys("within the travel budget")
    browser.find_element(By.CSS_SELECTOR, "[data-testid=decision-form] button[type=submit]").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".ok"), "Decision recorded"))
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h1 .badge"), "completed"))
    shot("task-completed")
    decided = api("GET", "/api/v1/instances/e2e-expense/history", tokens["admin"])
    assert any(e["event"] == "TaskCompleted" and e["actor"]["id"] == "april" for e in decided)

    # 4. The process map of the orders, mined from their histories, and its BPMN (saved
    #    beside the screenshots; scripts/api_checks.sh opens it as modelling tools do).
    browser.find_element(By.XPATH, "//button[text()='Sign out']").click()
    sign_in("operator")
    browser.get(base + "/#/maps/shop_order")
    drawing = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, "[data-testid=process-map]")))
    drawn = drawing.get_attribute("textContent")
    for expected in ["Start", "reserve_stock", "charge", "Wait after charge", "ship", "Completed"]:
        assert expected in drawn, f"the map lacks {expected}: {drawn!r}"
    steps = browser.find_element(By.XPATH, "//h2[text()='Steps']/..").text
    assert "reserve_stock" in steps and "ship" in steps, steps
    shot("process-map")
    for workflow_type in ["shop_order", "expense"]:
        request = urllib.request.Request(f"{base}/api/v1/types/{workflow_type}/map.bpmn")
        request.add_header("authorization", "Bearer " + tokens["operator"])
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["content-type"].startswith("application/xml")
            with open(os.path.join(SHOTS, f"{workflow_type}.bpmn"), "wb") as out:
                out.write(response.read())

    # The overview's step latency: the orders' activities, from their recent attempts.
    browser.get(base + "/#/overview")
    latency = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=step-latency]")))
    assert "charge" in latency.text and "reserve_stock" in latency.text, latency.text
    shot("overview-step-latency")

    # 5. The orders' report: counts, durations and the per-hour chart.
    browser.get(base + "/#/reports/shop_order?period=24h")
    # The overview just drawn has a `.stats` row too, and the report replaces the page only
    # after its first request: wait for the report's own figures, not for any stats row.
    wait.until(lambda b: "median duration" in b.find_element(By.TAG_NAME, "main").text)
    stats = browser.find_element(By.CSS_SELECTOR, ".stats").text
    assert "started" in stats and "median duration" in stats, stats
    assert "Instances per hour" in browser.find_element(By.TAG_NAME, "main").text
    shot("report")

    # 6. A batch action: two orders waiting for the warehouse, counted, then cancelled.
    for n in (1, 2):
        order = {"customer": "Grace Hopper", "region": "south", "items": 1, "cents": 1000,
                 "warehouse_secs": 600}
        api("POST", "/api/v1/instances", tokens["operator"],
            {"workflow_type": "shop_order", "id": f"e2e-batch-{n}", "input": order})
    browser.get(base + "/#/instances?id=e2e-batch&status=running")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(
        By.CSS_SELECTOR, "tr[data-id^='e2e-batch'] td[data-status='running']")) == 2)
    browser.find_element(By.CSS_SELECTOR, ".batch-card summary").click()
    browser.find_element(By.ID, "batch-reason").send_keys("customer withdrew")
    browser.find_element(By.CSS_SELECTOR, "[data-testid=batch-count-button]").click()
    count = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=batch-count]")))
    assert count.text == "2", count.text
    shot("batch-counted")
    browser.find_element(By.CSS_SELECTOR, "[data-testid=batch-apply]").click()
    wait.until(ec.text_to_be_present_in_element(
        (By.CSS_SELECTOR, "[data-testid=batch-result]"), "finished"))
    result = browser.find_element(By.CSS_SELECTOR, "[data-testid=batch-result]").text
    assert "2 done" in result, result
    shot("batch-done")
    # 7. The same filters saved as a view shared with the operators.
    browser.find_element(By.CSS_SELECTOR, "[data-testid=save-view]").click()
    wait.until(ec.presence_of_element_located((By.ID, "view-name"))).send_keys("Orders of the e2e batch")
    browser.find_element(By.CSS_SELECTOR, ".views input[type=checkbox][value=operator]").click()
    browser.find_element(By.CSS_SELECTOR, "[data-testid=save-view-submit]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-view='Orders of the e2e batch']")))
    shot("view-saved")
    views = api("GET", "/api/v1/views", tokens["operator"])
    assert views[0]["roles"] == ["operator"] and "id=e2e-batch" in views[0]["query"], views
    for n in (1, 2):
        events = api("GET", f"/api/v1/instances/e2e-batch-{n}/history", tokens["admin"])
        cancel = [e for e in events if e["event"] == "CancelRequested"]
        assert cancel and cancel[0]["actor"]["id"] == "olga", cancel
        assert cancel[0]["body"]["reason"].endswith(": customer withdrew"), cancel
    # 8. Schedules: an operator pauses one (the prompt asks why), resumes it, runs it now.
    browser.get(base + "/#/schedules")
    row = "tr[data-schedule='settle-north']"
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    archive = browser.find_element(By.CSS_SELECTOR, "tr[data-schedule='settle-archive']").text
    assert "paused" in archive and "archive store migration" in archive, archive
    click("//tr[@data-schedule='settle-north']//button[text()='Pause…']")
    prompt = wait.until(ec.alert_is_present())
    prompt.send_keys("month-end close")
    prompt.accept()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, row), "month-end close"))
    shot("schedule-paused")
    paused = api("GET", "/api/v1/schedules/settle-north", tokens["auditor"])
    assert paused["paused"]["by"] == "olga" and paused["paused"]["note"] == "month-end close", paused
    click("//tr[@data-schedule='settle-north']//button[text()='Run now']")
    started = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".ok a")))
    assert started.text.startswith("settle-north@"), started.text
    click("//tr[@data-schedule='settle-north']//button[text()='Resume']")
    # Read in the page: a live refresh may replace the row between a find and a read.
    wait.until(lambda b: "active" in b.execute_script(
        "const r = document.querySelector(arguments[0]); return r ? r.textContent : '';", row))
    assert api("GET", "/api/v1/schedules/settle-north", tokens["auditor"])["paused"] is None
    shot("schedules")
    print(f"dashboard end to end: ok, {step} screenshots in {SHOTS}")
except Exception:
    shot("failure")
    raise
finally:
    browser.quit()
    host.terminate()
    try:
        host.wait(timeout=10)
    except subprocess.TimeoutExpired:
        host.kill()
