"""A page on another origin, in a real Chromium, tries what a browser lets any site do to the
management API: requests it sends without asking the API first (a text/plain fetch, a form
POST, a POST with no body). The browser is given guest's credentials for every request, as
one that had remembered them would send them; each attack must still change nothing, while
the dashboard on the broker's own origin keeps working."""

import base64
import contextlib
import http.server
import threading

import pytest

from tests.broker_process import BrokerProcess
from tests.browser import MISSING, chromium, open_dashboard, wait_until
from tests.http_api import GUEST, call, path

if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402 - only once chromium is known to be there

# Another host on the loopback network: another origin (and another site) than 127.0.0.1.
ATTACKER_HOST = "127.0.0.2"

# The page: a text/plain fetch importing definitions, a bodiless POST binding a queue, and
# two forms whose text/plain bodies are JSON (the name/value pair closes the object): a
# publish, and a get that drops the message (ack_requeue_false). Its title says when all
# four have been answered.
ATTACK_PAGE = """<!DOCTYPE html>
<html><head><title>attacking</title></head><body>
<iframe name="publish-answer"></iframe><iframe name="get-answer"></iframe>
<form id="publish" method="post" enctype="text/plain" target="publish-answer"
      action="{broker}/api/exchanges/%2F/amq.default/publish">
  <input type="hidden" name='{{"routing_key":"{forged}","payload":"forged","payload_encoding":"string","properties":{{}},"pad":"'
         value='"}}'>
</form>
<form id="get" method="post" enctype="text/plain" target="get-answer" action="{broker}/api/queues/%2F/{victim}/get">
  <input type="hidden" name='{{"count":1,"ackmode":"ack_requeue_false","encoding":"auto","pad":"' value='"}}'>
</form>
<script>
"use strict";
const broker = "{broker}";
function submitted(formId, frameName) {{
  return new Promise(resolve => {{
    document.querySelector(`iframe[name="${{frameName}}"]`).addEventListener("load", resolve, {{ once: true }});
    document.getElementById(formId).submit();
  }});
}}
async function attack() {{
  await fetch(broker + "/api/definitions", {{ method: "POST", mode: "no-cors", headers: {{ "Content-Type": "text/plain" }},
                                             body: JSON.stringify({{ vhosts: [{{ name: "{vhost}" }}] }}) }});
  await fetch(broker + "/api/bindings/%2F/e/amq.fanout/q/{victim}", {{ method: "POST", mode: "no-cors" }});
  await submitted("publish", "publish-answer");
  await submitted("get", "get-answer");
  document.title = "answered";
}}
attack().catch(error => {{ document.title = "failed: " + error; }});
</script></body></html>
"""


@contextlib.contextmanager
def attacker_site(page):
    """An HTTP server on ATTACKER_HOST that serves `page` at /."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((ATTACKER_HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{ATTACKER_HOST}:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def remembered_credentials(driver, user, password):
    """Every request the browser makes carries these, as if it had remembered them."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": "Basic " + token}})


def test_a_page_on_another_origin_changes_nothing_while_the_dashboard_works(name):
    victim, forged, vhost = name + "-victim", name + "-forged", name + "-vhost"
    with BrokerProcess("--in-memory") as broker:
        port = broker.http_port
        for queue in (victim, forged):
            assert call(port, "PUT", path("queues", "/", queue), {"durable": False})[0] == 201
        call(port, "POST", path("exchanges", "/", "amq.default", "publish"), {"routing_key": victim, "payload": "mine"})
        page = ATTACK_PAGE.format(broker=f"http://127.0.0.1:{port}", victim=victim, forged=forged, vhost=vhost)
        with chromium() as driver, attacker_site(page) as attacker_url:
            remembered_credentials(driver, *GUEST)
            driver.get(attacker_url)
            assert wait_until(lambda: driver.title if driver.title != "attacking" else None) == "answered"

            assert call(port, "GET", path("vhosts", vhost))[0] == 404                            # no import
            assert call(port, "GET", path("bindings", "/", "e", "amq.fanout", "q", victim))[1] == []
            assert call(port, "GET", path("queues", "/", forged))[1]["messages_ready"] == 0      # no publish
            assert call(port, "GET", path("queues", "/", victim))[1]["messages_ready"] == 1      # nothing taken

            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
            open_dashboard(driver, port)
            driver.find_element(By.ID, "tab-queues").click()
            cells = wait_until(lambda: driver.find_element(
                By.CSS_SELECTOR, f'#queues-table tr[data-name="{victim}"]').find_elements(By.TAG_NAME, "td"))
            assert cells[2].text == "1"                                                          # Ready
        assert "Traceback" not in broker.log()
