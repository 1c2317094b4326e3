"""The web console in a real headless browser (Debian's chromium + chromedriver, via selenium)
against a real gateway process (``agent-runner serve``), a real celery worker, Redis and the
scripted model server.

Each test saves screenshots under ``test-artifacts/console/`` (or ``$AGENT_RUNNER_TEST_ARTIFACTS``)
and prints where. A missing browser skips locally and fails under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from runner_core.testing import ScriptedModelServer
from tests.services import free_port

pytest.importorskip("fastapi", reason="the gateway extra is not installed")

ROOT = Path(__file__).resolve().parent.parent
ALICE_KEY = "console-alice-key-0123456789"
BOB_KEY = "console-bob-key-0123456789ab"
OPERATOR_KEY = "console-operator-key-01234567"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("AGENT_RUNNER_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
#: Only keeps a broken page from hanging the suite; no test asserts on timing.
WAIT_S = 60

pytestmark = [pytest.mark.redis, pytest.mark.celery]


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing browser fails the run)", pytrace=False)
    pytest.skip(reason)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# --- the gateway ---------------------------------------------------------------------------


class Gateway:
    """``agent-runner serve`` on a free port of 127.0.0.1."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="console-gateway-", suffix=".log")
        args = [
            sys.executable, "-m", "workers.cli", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self) -> Gateway:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited at start:\n{self.log_tail()}")
            try:
                if httpx2.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the gateway is not ready after {WAIT_S} s:\n{self.log_tail()}")

    def request(self, method: str, path: str, key: str | None = ALICE_KEY, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx2.request(
            method, f"{self.url}{path}", headers=headers, timeout=30, trust_env=False, **kw
        )

    def get(self, path: str) -> Any:
        response = self.request("GET", path)
        assert response.status_code == 200, response.text
        return response.json()

    def log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-6000:]

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
def hold_dir(tmp_path: Path) -> Path:
    """Where the testkit tool ``hold(label)`` waits for the file ``label``."""
    return tmp_path


@pytest.fixture
def gateway(
    worker_env: dict[str, str],
    start_worker: Callable[..., Any],
    model_server: ScriptedModelServer,
    hold_dir: Path,
) -> Iterator[Gateway]:
    """A worker serving the ``testkit`` app with the scripted model, long-term memory in the
    test Redis, and a gateway in front."""
    apps = worker_env["AGENT_RUNNER_AGENTS"] + ",console=tests.console_agents:build_console"
    shared = {
        "AGENT_RUNNER_MEMORY_URL": worker_env["AGENT_RUNNER_REDIS_URL"],
        "AGENT_RUNNER_AGENTS": apps,
    }
    start_worker(
        OPENAI_BASE_URL=model_server.url, AGENT_RUNNER_TEST_HOLD_DIR=str(hold_dir), **shared
    )
    keys = f"{ALICE_KEY}=alice,{BOB_KEY}=bob,{OPERATOR_KEY}=*"
    env = {**worker_env, **shared, "AGENT_RUNNER_GATEWAY_API_KEYS": keys}
    server = Gateway(env)
    try:
        yield server.wait_ready()
    finally:
        server.close()


# --- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_binaries() -> tuple[str, str]:
    chromium = _chromium()
    if chromium is None or not os.path.exists(CHROMEDRIVER):
        _missing(
            "no chromium/chromedriver: apt-get install -y chromium chromium-driver "
            "(Debian's packages; .ci/run installs them)"
        )
    pytest.importorskip("selenium", reason="selenium (the dev extra) is not installed")
    assert chromium is not None
    return chromium, CHROMEDRIVER


class Page:
    """The console in one browser window, with the waits the tests need."""

    def __init__(self, driver: Any, url: str, shots: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.url = url
        self.shots = shots
        self.wait = WebDriverWait(driver, WAIT_S)
        #: Browser console messages a test expects (e.g. the 401 of a wrong key).
        self.expected_errors: list[str] = []

    def open(self) -> Page:
        self.viewport(1280, 800)
        self.driver.get(self.url)
        return self

    def viewport(self, width: int, height: int) -> None:
        """Make the page's viewport exactly ``width`` x ``height`` CSS pixels."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        """Wait until ``condition()`` returns something truthy; fail naming ``what``."""
        from selenium.common.exceptions import TimeoutException

        def probe(_driver: Any) -> Any:
            try:
                return condition()
            except Exception:  # an element replaced while read: look again
                return False

        try:
            return self.wait.until(probe)
        except TimeoutException:
            self.screenshot("timeout")
            notice = self.find("#notice").text
            raise AssertionError(
                f"waited {WAIT_S} s for {what}; notice: {notice!r}; transcript:\n"
                f"{self.find('#transcript').text}"
            ) from None

    def connect(self, key: str = ALICE_KEY, app: str = "testkit") -> None:
        from selenium.webdriver.common.keys import Keys

        self.find("#key-input").send_keys(key, Keys.ENTER)  # the keyboard is enough
        self.until(lambda: self.find("#composer-input").is_enabled(), "the console to connect")
        self.until(
            lambda: self.find("#app-select").get_attribute("value") == app
            or self.choose_app(app),
            f"the {app} app to be chosen",
        )
        self.until(lambda: app in self.find("#session-label").text, f"a session of {app}")

    def choose_app(self, app: str) -> bool:
        from selenium.webdriver.support.ui import Select

        Select(self.find("#app-select")).select_by_value(app)
        return False

    def send(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.find("#composer-input")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)  # Enter sends

    def completions(self) -> list[Any]:
        return self.find_all("#transcript .completion")

    def wait_for_completions(self, count: int) -> list[Any]:
        return self.until(
            lambda: (found := self.completions()) and len(found) >= count and found,
            f"{count} completed run(s) in the transcript",
        )

    def screenshot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def browser(
    browser_binaries: tuple[str, str],
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[[str], Page]]:
    """``browser(url)``: the page at ``url`` in a headless chromium window of 1280x800. The
    test fails if the page logged an error it did not expect."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_binaries
    profile = tempfile.mkdtemp(prefix="console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,800",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    shots = ARTIFACTS / request.node.name
    shutil.rmtree(shots, ignore_errors=True)
    pages: list[Page] = []

    def open_page(url: str) -> Page:
        pages.append(Page(driver, url, shots))
        return pages[-1].open()

    try:
        yield open_page
        expected = [text for page in pages for text in page.expected_errors]
        errors = [
            entry["message"]
            for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in expected)
        ]
        assert not errors, f"the page logged errors: {errors}"
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        with capsys.disabled():
            print(f"\n[console screenshots] {request.node.name}: {shots}")


@pytest.fixture
def page(browser: Callable[[str], Page], gateway: Gateway) -> Page:
    """The console of the test's gateway."""
    return browser(gateway.url + "/")


# --- the tests -----------------------------------------------------------------------------


def test_chat_streams_the_reply_and_shows_tool_calls(
    page: Page, model_server: ScriptedModelServer, gateway: Gateway
) -> None:
    # Given a tool call, then a reply in three deltas
    model_server.add_tool_calls([("call_1", "record", {"label": "console"})])
    model_server.add_text("The answer is forty-two.", chunks=["The answer ", "is ", "forty-two."])
    page.connect()
    # Record every text the streaming reply shows, to see it grow delta by delta.
    page.driver.execute_script(
        """
        window.__shown = [];
        new MutationObserver((records) => {
          for (const record of records) {
            for (const node of record.addedNodes) {
              if (node.nodeType === Node.TEXT_NODE && record.target.matches?.(".msg.agent .text")) {
                window.__shown.push(node.data);
              }
            }
          }
        }).observe(document.getElementById("transcript"), {childList: true, subtree: true});
        """
    )

    # When the user types a question and presses Enter
    page.send("what is six times seven?")

    # Then the run completes, the reply is there, and it appeared in parts before the whole
    completion = page.wait_for_completions(1)[0]
    assert "completed" in completion.text
    replies = page.find_all("#transcript .msg.agent .text")
    assert [reply.text for reply in replies] == ["The answer is forty-two."]
    shown = page.driver.execute_script("return window.__shown")
    assert shown[:3] == ["The answer ", "The answer is ", "The answer is forty-two."], shown
    # the agent speaking is named, the user's message is shown once
    assert page.find("#transcript .msg.agent .who").text == "testkit"
    assert [m.text for m in page.find_all("#transcript .msg.user .text")] == [
        "what is six times seven?"
    ]
    # the tool call and its result
    tool = page.find("#transcript .tool")
    assert "record" in tool.find_element("css selector", ".tool-name").text
    assert "console" in tool.find_element("css selector", ".tool-args").text
    assert "recorded console (1)" in tool.find_element("css selector", ".tool-result").text
    # status, usage of the run
    status = page.find("#run-status").text
    assert "completed" in status and "tokens" in status and "model call" in status
    assert "null" not in status and "undefined" not in status
    page.screenshot("chat")

    # On a narrow window the same page still shows the conversation and the message box
    page.viewport(400, 800)
    box = page.find("#composer-input")
    assert box.is_displayed() and box.size["width"] <= 400
    width = page.driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400, f"the page is {width} px wide in a 400 px window"
    page.screenshot("chat-narrow")


def test_model_text_is_shown_as_text_never_markup(
    page: Page, model_server: ScriptedModelServer
) -> None:
    hostile = '<img src=x onerror="window.__pwned=1"><b>bold?</b>'
    model_server.add_text(hostile)
    page.connect()
    page.send("say something odd")
    page.wait_for_completions(1)
    assert page.find("#transcript .msg.agent .text").text == hostile
    assert page.find_all("#transcript img, #transcript b") == []
    assert page.driver.execute_script("return window.__pwned === undefined")
    page.screenshot("escaped")


def test_a_paused_run_is_approved_in_the_console(
    page: Page, model_server: ScriptedModelServer, gateway: Gateway
) -> None:
    # Given a run that asks for a refund (a tool that needs confirmation)
    model_server.add_tool_calls([("call_r", "refund", {"amount": 5})])
    model_server.add_text("Refund done.")
    page.connect()
    page.send("refund my order")

    # Then the console shows the paused run and asks to confirm
    page.until(lambda: page.find("#transcript .confirm button.approve"), "a confirmation")
    assert "paused" in page.find("#run-status").text
    assert "refund" in page.find("#transcript .confirm legend").text
    assert '"amount": 5' in page.find("#transcript .confirm .tool-args").text
    page.screenshot("paused")

    # When the user approves
    page.find("#transcript .confirm button.approve").click()

    # Then a new run goes on in the same session: the refund runs, the model answers
    page.wait_for_completions(2)
    assert "completed" in page.completions()[-1].text
    assert "refunded 5" in page.find("#transcript .tool .tool-result").text
    assert page.find_all("#transcript .msg.agent .text")[-1].text == "Refund done."
    page.screenshot("approved")
    session = page.find("#session-label").text.split()[1]
    history = gateway.get(f"/v1/sessions/testkit/{session}")
    results = [e for e in history["events"] if e["type"] == "tool.result"]
    assert [r["message"]["content"] for r in results] == ["refunded 5"]


def _open_trace(page: Page) -> list[Any]:
    """Open the last run's trace; return its steps once the trace is complete (the console
    shows a running trace as it grows)."""
    page.completions()[-1].find_element("css selector", "button.open-trace").click()
    page.until(lambda: " · completed · " in page.find("#trace-summary").text, "the whole trace")
    return page.find_all("#trace-graph button.step")


def _step(page: Page, step_id: str) -> Any:
    return page.find(f'#trace-graph button.step[data-step-id="{step_id}"]')


def test_the_trace_is_a_graph_and_feedback_creates_an_experience(
    page: Page, model_server: ScriptedModelServer, redis_url: str
) -> None:
    # Given a run that called a tool, then answered
    model_server.add_tool_calls([("call_1", "record", {"label": "traced"})])
    model_server.add_text("Recorded it.")
    page.connect()
    page.send("record this")
    completion = page.wait_for_completions(1)[0]
    assert "completed" in completion.text
    assert len(page.find_all("#transcript li.tool")) == 1

    # When the user opens the run's trace
    steps = _open_trace(page)

    # Then every step is a button, each below the steps it follows, joined by drawn lines
    ids = [step.get_attribute("data-step-id") for step in steps]
    by_id = dict(zip(ids, steps, strict=True))
    tool = next(i for i in ids if i.startswith("tool:"))
    models = [i for i in ids if i.startswith("model:")]
    assert len(models) == 2 and "conclusion" in ids, ids
    first_model, second_model = sorted(models, key=lambda i: by_id[i].location["y"])
    assert by_id[first_model].location["y"] < by_id[tool].location["y"]
    assert by_id[tool].location["y"] < by_id[second_model].location["y"]
    assert by_id[second_model].location["y"] < by_id["conclusion"].location["y"]
    assert len(page.find_all("#trace-graph svg line")) >= 3
    assert "completed" in page.find("#trace-summary").text
    page.screenshot("trace")

    # When the user picks the answer's step with the keyboard and corrects it
    from selenium.webdriver.common.keys import Keys

    _step(page, second_model).send_keys(Keys.ENTER)
    page.until(lambda: "Recorded it." in page.find("#step-detail").text, "the step's reply")
    correction = "Say which label was recorded."
    page.find("#correction-input").send_keys(correction)
    page.find("#step-detail button.send-correction").click()

    # Then the console shows the experience the feedback created ...
    result = page.until(
        lambda: "created this experience" in (text := page.find(".feedback-result").text) and text,
        "the experience the correction created",
    )
    assert correction in result
    page.driver.execute_script("arguments[0].scrollIntoView()", page.find(".feedback-result"))
    page.screenshot("feedback")
    # ... and it is in long-term memory, in the agent's scope, pointing at the step
    from runner_core.memory import Experience
    from session_backends.memories import memory_from_url

    async def stored() -> list[Any]:
        memory = memory_from_url(redis_url)
        try:
            return await memory.items("testkit", "agent:testkit", kinds=["experience"])
        finally:
            await memory.close()

    [experience] = asyncio.run(stored())
    assert isinstance(experience, Experience)
    assert experience.rule == correction and experience.confidence == 0.6
    run = page.find("#trace-summary").text.split()[1]
    assert f"{run}/{second_model}" in experience.evidence
    assert experience.id in result

    # And a thumbs up on the tool call is an experience too (confidence 0.8)
    _step(page, tool).click()
    page.find("#step-detail button.thumb.up").click()
    page.until(
        lambda: "created this experience" in page.find(".feedback-result").text, "the thumbs up"
    )
    rules = {e.rule: e.confidence for e in asyncio.run(stored())}
    assert rules[correction] == 0.6
    assert [c for r, c in rules.items() if r.startswith("Keep doing this: call record")] == [0.8]

    # And the trace, opened again, holds the feedback steps
    steps = _open_trace(page)
    kinds = [step.get_attribute("class") for step in steps]
    assert sum("kind-feedback" in k for k in kinds) == 2
    assert sum("kind-memory_write" in k for k in kinds) == 2


def test_a_confirmation_edits_the_editable_arguments(
    page: Page, model_server: ScriptedModelServer, gateway: Gateway
) -> None:
    # Given a refund the person may change the amount of (not the order)
    model_server.add_tool_calls([("call_e", "refund", {"order_id": "A-1", "amount": 50})])
    model_server.add_text("Refunded.")
    page.connect(app="console")
    apps = [option.text for option in page.find_all("#app-select option")]
    assert apps == ["assistant", "console", "testkit"]
    page.send("refund order A-1")
    page.until(lambda: page.find("#transcript .confirm button.approve"), "a confirmation")
    assert page.find("#transcript .confirm .who").text == "support asks you to confirm"
    # only the editable argument has a field
    [field] = page.find_all("#transcript .confirm input")
    assert page.find(f'label[for="{field.get_attribute("id")}"]').text == "amount (JSON)"
    assert field.get_attribute("value") == "50"

    # When the person lowers the amount and approves
    field.clear()
    field.send_keys("20")
    page.screenshot("edit")
    page.find("#transcript .confirm button.approve").click()

    # Then the refund runs with the edited amount, the order as the model asked
    page.wait_for_completions(2)
    assert "refunded 20 on A-1" in page.find("#transcript .tool .tool-result").text
    session = page.find("#session-label").text.split()[1]
    history = gateway.get(f"/v1/sessions/console/{session}")
    results = [e["message"]["content"] for e in history["events"] if e["type"] == "tool.result"]
    assert results == ["refunded 20 on A-1"]


def test_a_refused_call_does_not_run(
    page: Page, model_server: ScriptedModelServer, gateway: Gateway
) -> None:
    model_server.add_tool_calls([("call_x", "refund", {"order_id": "B-2", "amount": 9})])
    model_server.add_text("I did not refund it.")
    page.connect(app="console")
    page.send("refund order B-2")
    page.until(lambda: page.find("#transcript .confirm button.refuse"), "a confirmation")
    page.find("#transcript .confirm button.refuse").click()
    page.wait_for_completions(2)
    assert page.find_all("#transcript .msg.agent .text")[-1].text == "I did not refund it."
    session = page.find("#session-label").text.split()[1]
    history = gateway.get(f"/v1/sessions/console/{session}")
    results = [e for e in history["events"] if e["type"] == "tool.result"]
    assert len(results) == 1 and "refunded" not in results[0]["message"]["content"]
    page.screenshot("refused")


def test_a_running_runs_trace_grows_in_the_panel(
    page: Page, model_server: ScriptedModelServer, hold_dir: Path
) -> None:
    # Given a run held in a tool
    model_server.add_tool_calls([("call_t", "hold", {"label": "live"})])
    model_server.add_text("Done waiting.")
    page.connect()
    page.send("wait for it")
    page.until(lambda: (hold_dir / "live.held").exists(), "the tool to be waiting")

    # When the user opens its trace from the run's status bar, while it runs
    page.find("#run-status button.status-trace").click()
    page.until(lambda: " · running · " in page.find("#trace-summary").text, "a running trace")
    assert "conclusion" not in [
        step.get_attribute("data-step-id") for step in page.find_all("#trace-graph button.step")
    ]
    page.screenshot("running-trace")

    # Then, once the run goes on and ends, the open panel shows the whole trace by itself
    (hold_dir / "live").touch()
    page.until(lambda: " · completed · " in page.find("#trace-summary").text, "the whole trace")
    page.until(
        lambda: _step(page, "conclusion").is_displayed(), "the conclusion step in the graph"
    )
    page.screenshot("finished-trace")


def test_sessions_are_listed_and_reopened(
    page: Page, model_server: ScriptedModelServer
) -> None:
    model_server.add_text("First answer.")
    model_server.add_text("Second answer.")
    page.connect()
    first = page.find("#session-label").text.split()[1]
    page.send("first question")
    page.wait_for_completions(1)
    # a new session, then back to the first from the list
    page.find("#new-session").click()
    assert page.find_all("#transcript .item") == []
    page.send("second question")
    page.wait_for_completions(1)
    page.until(
        lambda: len(page.find_all("#session-list button.session")) >= 2,
        "two sessions in the list",
    )
    page.find(f'#session-list button[data-session-id="{first}"]').click()
    page.until(
        lambda: [m.text for m in page.find_all("#transcript .msg .text")]
        == ["first question", "First answer."],
        "the first session's history",
    )
    current = page.find('#session-list button[aria-current="true"]')
    assert current.get_attribute("data-session-id") == first
    page.screenshot("sessions")


def test_a_wrong_key_is_refused_clearly(page: Page) -> None:
    page.expected_errors.append("/v1/apps - Failed to load resource")  # the 401
    page.find("#key-input").send_keys("not-a-key-of-this-gateway")
    page.find("#key-connect").click()
    page.until(lambda: "not valid" in page.find("#notice").text, "the refusal")
    assert not page.find("#composer-input").is_enabled()
    assert page.driver.execute_script("return sessionStorage.length") == 0
    page.screenshot("refused")



def test_agent_runner_dev_prints_the_console_url_and_the_console_chats(
    browser: Callable[[str], Page],
) -> None:
    # Given `agent-runner dev` (its own Redis, worker and gateway; the offline demo model)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGENT_RUNNER_"))}
    dev = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "dev", "--user", "carol", "--concurrency", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=ROOT, env=env, text=True, start_new_session=True,
    )  # fmt: skip
    assert dev.stdin is not None and dev.stdout is not None
    try:
        # When it prints the console's URL
        seen = []
        for line in dev.stdout:
            seen.append(line)
            if line.startswith("console:") or len(seen) > 50:
                break
        assert seen[-1].startswith("console: http://127.0.0.1:"), "".join(seen)
        url = seen[-1].split()[1]
        assert "#key=" in url

        # Then the console opened at that URL is connected with the stack's key (taken out of
        # the address bar) and chats with the built-in assistant through the whole stack
        page = browser(url)
        page.until(lambda: page.find("#composer-input").is_enabled(), "the console to connect")
        assert "#key=" not in page.driver.current_url
        assert page.find("#app-select").get_attribute("value") == "assistant"
        page.send("what is 6*7")
        page.wait_for_completions(1)
        assert "42" in page.find_all("#transcript .msg.agent .text")[-1].text
        assert "calculator" in page.find("#transcript .tool .tool-name").text
        page.screenshot("dev")
    finally:
        dev.stdin.write("/exit\n")
        dev.stdin.close()
        try:
            dev.wait(timeout=60)
        finally:
            if dev.poll() is None:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait()
    rest = dev.stdout.read()
    dev.stdout.close()
    assert dev.returncode == 0, rest
    assert "bye" in rest


def test_the_stream_resumes_on_a_new_gateway_without_a_gap_or_a_repeat(
    page: Page, model_server: ScriptedModelServer, gateway: Gateway, hold_dir: Path
) -> None:
    # Given a run held in a tool (testkit's hold) after its first events reached the page
    model_server.add_tool_calls([("call_h", "hold", {"label": "go"})])
    model_server.add_text("After the restart.", chunks=["After ", "the ", "restart."])
    page.connect()
    page.driver.execute_script(
        """
        const notice = document.getElementById("notice");
        window.__notices = [];
        new MutationObserver(() => window.__notices.push(notice.textContent))
          .observe(notice, {childList: true, subtree: true, characterData: true});
        """
    )
    page.send("hold on")
    page.until(lambda: page.find("#transcript .tool .tool-name"), "the held tool call")
    page.until(lambda: (hold_dir / "go.held").exists(), "the tool to be waiting")
    # (a message typed meanwhile waits in the box: one run at a time in the page)
    page.send("too soon")
    page.until(lambda: "A run is going on" in page.find("#notice").text, "the refusal")
    assert page.find("#composer-input").get_attribute("value") == "too soon"
    assert not page.find("#send").is_enabled()
    page.find("#composer-input").clear()

    # When the gateway dies and another one takes its address
    page.expected_errors.append("/events - Failed to load resource: net::ERR_")  # the drop
    gateway.close()
    page.until(
        lambda: any("resuming" in n for n in page.driver.execute_script("return window.__notices")),
        "the console to notice the dropped stream",
    )
    replacement = Gateway(gateway.env, port=gateway.port)
    try:
        replacement.wait_ready()
        # and the run goes on
        (hold_dir / "go").touch()

        # Then the page gets the rest of the run from the new gateway: each event once
        page.wait_for_completions(1)
        assert [r.text for r in page.find_all("#transcript .msg.agent .text")] == [
            "After the restart."
        ]
        assert len(page.find_all("#transcript .tool")) == 1
        assert "released go" in page.find("#transcript .tool .tool-result").text
        assert [m.text for m in page.find_all("#transcript .msg.user .text")] == ["hold on"]
        assert "completed" in page.find("#run-status").text
        page.screenshot("resumed")
    finally:
        replacement.close()


# --- the console's own routes, over HTTP ---------------------------------------------------


def test_the_console_routes_answer_for_the_keys_user_only(
    gateway: Gateway, model_server: ScriptedModelServer
) -> None:
    # Given a session of alice's, made through the API
    model_server.add_text("hello alice")
    submitted = gateway.request(
        "POST", "/v1/runs", json={"app_name": "testkit", "session_id": "s-alice", "message": "hi"}
    )
    assert submitted.status_code == 202, submitted.text
    run = submitted.json()["invocation_id"]
    deadline = time.monotonic() + WAIT_S
    while gateway.get(f"/v1/runs/{run}")["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.1)

    # Then alice's key lists it, bob's does not, and an operator must name the user
    def sessions(key: str, query: str = "") -> Any:
        return gateway.request("GET", f"/v1/sessions/testkit{query}", key=key)

    listed = sessions(ALICE_KEY).json()
    assert listed["user_id"] == "alice"
    assert [s["session_id"] for s in listed["sessions"]] == ["s-alice"]
    assert listed["sessions"][0]["event_count"] >= 2
    assert sessions(BOB_KEY).json()["sessions"] == []
    assert sessions(BOB_KEY, "?user_id=alice").status_code == 422  # not bob's user
    refused = sessions(OPERATOR_KEY)
    assert refused.status_code == 422 and "user_id is required" in refused.text
    for_alice = sessions(OPERATOR_KEY, "?user_id=alice").json()["sessions"]
    assert [s["session_id"] for s in for_alice] == ["s-alice"]
    # the app list names the configured apps; no key, no answer
    assert gateway.get("/v1/apps") == {"apps": ["assistant", "console", "testkit"]}
    anonymous = gateway.request("GET", "/v1/apps", key=None)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "unauthorized"
    bad = gateway.request("GET", "/v1/sessions/bad%20app")
    assert bad.status_code == 422 and "app_name" in bad.json()["error"]["message"]
    # the page and its files need no key, and the page forbids inline script and framing
    page = gateway.request("GET", "/", key=None)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    script = gateway.request("GET", "/console/main.js", key=None)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    code = "".join(
        gateway.request("GET", f"/console/{name}", key=None).text
        for name in ("main.js", "transcript.js", "trace.js", "dom.js", "sse.js", "api.js")
    )
    for sink in ("innerHTML =", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code, f"the console's code uses {sink}"
