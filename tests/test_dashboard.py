"""The dashboard in a real headless Chromium, against a real broker."""

import pytest

from tests.broker_process import BrokerProcess
from tests.browser import MISSING, chromium, console_errors, open_dashboard, wait_until
from tests.http_api import call, path

if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402 - only once chromium is known to be there


@pytest.fixture(scope="module")
def dashboard_broker():
    with BrokerProcess("--stats-interval", "0.3") as process:
        yield process
        log = process.log()
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def publish(broker, queue, count, body="hello"):
    for _ in range(count):
        call(broker.http_port, "POST", path("exchanges", "/", "amq.default", "publish"),
             {"routing_key": queue, "payload": body})


def queue_row(driver, name):
    return driver.find_element(By.CSS_SELECTOR, f'#queues-table tr[data-name="{name}"]')


def ready_in_api(broker, queue):
    return call(broker.http_port, "GET", path("queues", "/", queue))[1]["messages_ready"]


def test_the_page_loads_without_console_errors_and_shows_a_queue_with_its_count(dashboard_broker, browser, name):
    call(dashboard_broker.http_port, "PUT", path("queues", "/", name), {"durable": False})
    call(dashboard_broker.http_port, "PUT", path("queues", "/", "a-queue-the-filter-hides"), {"durable": False})
    publish(dashboard_broker, name, 7)
    open_dashboard(browser, dashboard_broker.http_port)
    browser.find_element(By.ID, "tab-queues").click()
    cells = wait_until(lambda: queue_row(browser, name).find_elements(By.TAG_NAME, "td"))
    assert cells[2].text == "7"                          # Ready
    assert cells[-1].text == "classic"                   # Type
    publish(dashboard_broker, name, 2)                   # the table refreshes by itself
    wait_until(lambda: queue_row(browser, name).find_elements(By.TAG_NAME, "td")[2].text == "9")
    wait_until(lambda: queue_row(browser, "a-queue-the-filter-hides"))
    browser.find_element(By.ID, "queues-table-filter").send_keys(name[:12])
    assert [row.get_attribute("data-name") for row in
            browser.find_elements(By.CSS_SELECTOR, "#queues-table tr[data-name]")] == [name]
    assert console_errors(browser) == []


def test_tables_sort_by_the_column_clicked(dashboard_broker, browser, name):
    depths = {f"{name}-{letter}": depth for letter, depth in zip("abc", (12, 3, 7))}  # 12 sorts first as text
    for queue, depth in depths.items():
        call(dashboard_broker.http_port, "PUT", path("queues", "/", queue), {"durable": False})
        publish(dashboard_broker, queue, depth)
    open_dashboard(browser, dashboard_broker.http_port)
    browser.find_element(By.ID, "tab-queues").click()
    wait_until(lambda: browser.find_element(By.ID, "queues-table-filter")).send_keys(name + "-")

    def order():
        return [row.get_attribute("data-name") for row in
                browser.find_elements(By.CSS_SELECTOR, "#queues-table tr[data-name]")]
    wait_until(lambda: order() == sorted(depths))                   # by name at first
    browser.find_element(By.CSS_SELECTOR, '#queues-table th[data-key="messages_ready"]').click()
    assert order() == sorted(depths, key=depths.get)
    browser.find_element(By.CSS_SELECTOR, '#queues-table th[data-key="messages_ready"]').click()
    assert order() == sorted(depths, key=depths.get, reverse=True)


def test_the_chart_moves_as_messages_flow(dashboard_broker, browser, name):
    call(dashboard_broker.http_port, "PUT", path("queues", "/", name), {"durable": False})
    open_dashboard(browser, dashboard_broker.http_port)
    browser.find_element(By.ID, "tab-overview").click()
    canvas = browser.find_element(By.ID, "rate-chart")
    before = canvas.screenshot_as_png

    def flowing():
        publish(dashboard_broker, name, 20)
        rate = float(browser.find_element(By.ID, "rate-publish").get_attribute("data-rate"))
        return rate > 0 and canvas.screenshot_as_png != before
    wait_until(flowing)
    assert int(canvas.get_attribute("data-points")) >= 2
    assert console_errors(browser) == []


def test_a_purge_through_the_page_asks_first_and_empties_the_queue(dashboard_broker, browser, name):
    call(dashboard_broker.http_port, "PUT", path("queues", "/", name), {"durable": False})
    publish(dashboard_broker, name, 5)
    open_dashboard(browser, dashboard_broker.http_port)
    browser.find_element(By.ID, "tab-queues").click()
    wait_until(lambda: queue_row(browser, name)).find_element(By.TAG_NAME, "a").click()
    wait_until(lambda: browser.find_element(By.CSS_SELECTOR, '#queue-fields [data-field="Ready"]').text == "5")

    browser.find_element(By.ID, "get-button").click()          # get messages (requeued)
    wait_until(lambda: "hello" in browser.find_element(By.ID, "got-messages").text)

    browser.find_element(By.ID, "purge-button").click()
    browser.switch_to.alert.dismiss()                           # a dismissed question changes nothing
    assert ready_in_api(dashboard_broker, name) == 5
    browser.find_element(By.ID, "purge-button").click()
    alert = browser.switch_to.alert
    assert name in alert.text
    alert.accept()
    wait_until(lambda: ready_in_api(dashboard_broker, name) == 0)
    wait_until(lambda: browser.find_element(By.CSS_SELECTOR, '#queue-fields [data-field="Ready"]').text == "0")

    browser.find_element(By.ID, "delete-button").click()
    browser.switch_to.alert.accept()
    wait_until(lambda: call(dashboard_broker.http_port, "GET", path("queues", "/", name))[0] == 404)
    wait_until(lambda: not browser.find_elements(By.CSS_SELECTOR, f'#queues-table tr[data-name="{name}"]'))
    assert console_errors(browser) == []


def test_a_management_user_sees_only_its_own_vhosts(dashboard_broker, browser, name):
    port, vhost = dashboard_broker.http_port, name + "-vhost"
    call(port, "PUT", path("vhosts", vhost), {})
    call(port, "PUT", path("users", name), {"password": "pw", "tags": "management"})
    for user in (name, "guest"):      # as in RabbitMQ, even an administrator needs rights in a vhost to declare there
        call(port, "PUT", path("permissions", vhost, user), {"configure": ".*", "write": ".*", "read": ".*"})
    assert call(port, "PUT", path("queues", vhost, name + "-mine"), {"durable": False})[0] == 201
    assert call(port, "PUT", path("queues", "/", name + "-other"), {"durable": False})[0] == 201
    open_dashboard(browser, port, name, "pw")
    browser.find_element(By.ID, "tab-queues").click()
    wait_until(lambda: queue_row(browser, name + "-mine"))
    assert not browser.find_elements(By.CSS_SELECTOR, f'#queues-table tr[data-name="{name}-other"]')


def test_wrong_credentials_show_the_reason_and_the_login_form_again(dashboard_broker, browser):
    browser.get(f"http://127.0.0.1:{dashboard_broker.http_port}/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"http://127.0.0.1:{dashboard_broker.http_port}/")
    browser.find_element(By.ID, "login-user").send_keys("guest")
    browser.find_element(By.ID, "login-password").send_keys("wrong")
    browser.find_element(By.ID, "login-submit").click()
    error = wait_until(lambda: browser.find_element(By.ID, "error").text)
    assert "ACCESS_REFUSED" in error
    assert browser.find_element(By.ID, "login").is_displayed()


def test_the_policies_tab_lists_policies_and_operator_policies_and_queues_show_theirs(dashboard_broker, browser, name):
    port = dashboard_broker.http_port
    call(port, "PUT", path("queues", "/", name), {"durable": False})
    assert call(port, "PUT", path("policies", "/", name), {"pattern": f"^{name}$", "definition": {"max-length": 9},
                                                           "priority": 4})[0] == 201
    assert call(port, "PUT", path("operator-policies", "/", name + "-op"),
                {"pattern": f"^{name}$", "definition": {"max-length": 5}})[0] == 201
    console_errors(browser)         # reading the log empties it: what earlier tests left (a refused login) goes
    try:
        open_dashboard(browser, port)
        browser.find_element(By.ID, "tab-queues").click()
        wait_until(lambda: queue_row(browser, name).find_elements(By.TAG_NAME, "td")[6].text == f"{name} + {name}-op")
        browser.find_element(By.ID, "tab-policies").click()
        cells = wait_until(lambda: browser.find_element(
            By.CSS_SELECTOR, f'#policies-table tr[data-name="{name}"]').find_elements(By.TAG_NAME, "td"))
        assert [cell.text for cell in cells] == [name, "policy", "/", f"^{name}$", "all", '{"max-length":9}', "4"]
        wait_until(lambda: browser.find_element(By.CSS_SELECTOR, f'#policies-table tr[data-name="{name}-op"]'))
        assert console_errors(browser) == []
    finally:
        call(port, "DELETE", path("policies", "/", name))
        call(port, "DELETE", path("operator-policies", "/", name + "-op"))
