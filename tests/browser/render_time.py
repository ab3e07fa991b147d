"""Times the dashboard's overview in headless Chromium: from the navigation's start to
the moment its figures are on the page (the first `.stats` element in the DOM, seen by a
MutationObserver installed before the page's own script runs). Prints one line per load
and the median.

    render_time.py BASE TOKEN [LOADS]
"""

import statistics
import sys

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

base, token = sys.argv[1], sys.argv[2]
loads = int(sys.argv[3]) if len(sys.argv) > 3 else 5

options = Options()
for arg in ("--headless=new", "--no-sandbox", "--window-size=1366,900"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.execute_cdp_cmd(
    "Page.addScriptToEvaluateOnNewDocument",
    {
        "source": """
new MutationObserver(function (_, observer) {
  if (document.querySelector(".stats")) {
    window.__drawnAt = performance.now();
    observer.disconnect();
  }
}).observe(document, { subtree: true, childList: true });
"""
    },
)
driver.get(base + "/")
driver.execute_script("sessionStorage.setItem('cairn-token', arguments[0])", token)
times = []
for n in range(loads):
    driver.get(base + "/?load=%d#/overview" % n)
    drawn = WebDriverWait(driver, 60, poll_frequency=0.05).until(
        lambda d: d.execute_script("return window.__drawnAt")
    )
    times.append(drawn)
    print("overview drawn %.0f ms after navigation (load %d)" % (drawn, n + 1))
driver.quit()
print("dashboard overview: median %.0f ms over %d loads" % (statistics.median(times), loads))
