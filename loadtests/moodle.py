"""Locust users that mirror Moodle's own JMeter test plan (admin/tool/generator), step for
step, plus the exam-start surge. Run by `kit loadtest run`, or directly:

    KIT_LT_TARGET=target.json KIT_LT_PASSWORD=... locust -f loadtests/moodle.py --host URL

Settings come from the environment (never the command line: it holds the password):
  KIT_LT_TARGET      JSON from `kit loadtest seed` (course, page, forum, discussion, quiz ids, users)
  KIT_LT_PASSWORD_FILE  a file with the password of the generated users (tool_generator_users_password);
                     or KIT_LT_PASSWORD, the password itself (by hand only: `kit loadtest` uses the file)
  KIT_LT_JOURNEY     moodle (default) | exam
  KIT_LT_THINK       think time range in seconds between steps, "min,max" (default 1,3)
  KIT_LT_SHAPE       steady (default) | surge, with KIT_LT_PEAK, KIT_LT_STEP, KIT_LT_STEP_TIME
  KIT_LT_WINDOW      exam: seconds over which students log in before the exam starts
"""
from __future__ import annotations

import itertools
import json
import os
import random
import time
from urllib.parse import urljoin

import requests  # noqa: E402,I001  (after locust: it monkey-patches ssl first)
import urllib3  # noqa: E402
from locust import HttpUser, LoadTestShape, events, task
from locust.clients import LocustHttpAdapter
from locust.exception import StopUser
from locust.runners import WorkerRunner

from kit.loadtest import pages
from kit.loadtest.retry import browser_retry

TARGET = json.loads(open(os.environ["KIT_LT_TARGET"]).read()) if os.environ.get("KIT_LT_TARGET") else {}
PASSWORD = (open(os.environ["KIT_LT_PASSWORD_FILE"]).read().strip() if os.environ.get("KIT_LT_PASSWORD_FILE")
            else os.environ.get("KIT_LT_PASSWORD", ""))
THINK_MIN, THINK_MAX = (float(x) for x in os.environ.get("KIT_LT_THINK", "1,3").split(","))
JOURNEY = os.environ.get("KIT_LT_JOURNEY", "moodle")
WINDOW = float(os.environ.get("KIT_LT_WINDOW", "60"))
HOST_HEADER = os.environ.get("KIT_LT_HOST_HEADER")
# With HOST_HEADER: the site's public URL. Moodle redirects to it (wwwroot); such redirects
# are followed on the local address instead, as a reverse proxy's proxy_redirect would.
PUBLIC_URL = os.environ.get("KIT_LT_PUBLIC_URL", "").rstrip("/")
# The kit's own site through its local address (an IP, the name in the Host header): its
# certificate cannot match the address, so it is not checked (`kit certs` checks it).
VERIFY = os.environ.get("KIT_LT_VERIFY", "1") != "0"
if not VERIFY:
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
#: The exam journey: each locust process writes when its students had an attempt open and
#: when they submitted it (the summary reports how long after the start the last one did).
EXAM_DIR = os.environ.get("KIT_LT_EXAM_DIR")
EXAM_TIMES: dict[str, list[float]] = {"opened": [], "submitted": []}
FAIL_DIR = os.environ.get("KIT_LT_FAIL_DIR")  # failed responses are kept here for a person to read
_saved_failures = itertools.count()
TIMEOUT = (5, 30)
MAX_REDIRECTS = 5  # as many hops as a Moodle page takes (login: testsession, then wantsurl)
_user_numbers = itertools.count()


def follow_locally(session: requests.Session, local_base: str) -> None:
    """Follow redirects to the public URL on the local address the load is sent to."""
    if not PUBLIC_URL:
        return
    original = session.get_redirect_target

    def get_redirect_target(resp: requests.Response) -> str | None:
        location = original(resp)
        if location and location.startswith(PUBLIC_URL) and location[len(PUBLIC_URL):][:1] in ("", "/", "?"):
            return local_base + location[len(PUBLIC_URL):]
        return location

    session.get_redirect_target = get_redirect_target  # type: ignore[method-assign]


def _next_username(environment) -> str:
    """Spread generated users over all locust processes without collisions."""
    runner = environment.runner
    workers = max(1, int(os.environ.get("KIT_LT_PROCESSES", "1")))
    index = getattr(runner, "worker_index", 0) or 0
    count = int(TARGET.get("users", {}).get("count", 1))
    number = (next(_user_numbers) * workers + index) % count + 1
    return f"{TARGET.get('users', {}).get('prefix', 'tool_generator_')}{number:06d}"


def _keep_failed_page(step: str, resp, reason: str) -> None:
    """Save the first failed responses of a run: what the student saw, and why it failed."""
    number = next(_saved_failures)
    if not FAIL_DIR or number >= 20:
        return
    os.makedirs(FAIL_DIR, exist_ok=True)
    safe = "".join(c if c.isalnum() else "-" for c in step)
    with open(os.path.join(FAIL_DIR, f"{number:02d}-{safe}.html"), "w", encoding="utf-8") as fh:
        error = getattr(resp, "error", None) or ""
        fh.write(f"<!-- {reason} | HTTP {resp.status_code} | {resp.url} | {error} | {time.strftime('%H:%M:%S')} -->\n")
        fh.write(resp.text or "")


@events.test_start.add_listener
def warm_up(environment, **_kwargs) -> None:
    """Like the JMeter plan's "Warm-up site": one user walks every page once before the load,
    so first-hit work (caches, lazy config writes) is not counted against the site."""
    if isinstance(environment.runner, WorkerRunner) or not TARGET or not environment.host:
        return
    session = requests.Session()
    session.verify = VERIFY
    base, t = environment.host.rstrip("/"), TARGET
    if HOST_HEADER:
        session.headers["Host"] = HOST_HEADER
        follow_locally(session, base)
    try:
        token = pages.logintoken(session.get(f"{base}/login/index.php", timeout=TIMEOUT).text)
        session.post(f"{base}/login/index.php", timeout=TIMEOUT, data={
            "username": f"{t['users']['prefix']}{t['users']['count']:06d}", "password": PASSWORD, "logintoken": token})
        for path in ("/", f"/course/view.php?id={t['course_id']}", f"/mod/page/view.php?id={t['page_cmid']}",
                     f"/mod/forum/view.php?id={t['forum_cmid']}", f"/mod/forum/discuss.php?d={t['discussion_id']}",
                     f"/mod/forum/post.php?reply={t['reply_post_id']}", f"/user/index.php?id={t['course_id']}"):
            session.get(base + path, timeout=TIMEOUT)
    except requests.RequestException:
        pass  # the load itself will report an unreachable site


class MoodleUser(HttpUser):
    """What every journey shares: a generated user, checked steps, think time."""

    abstract = True

    def wait_time(self) -> float:  # noqa: D401 - locust API
        return random.uniform(THINK_MIN, THINK_MAX)

    def on_start(self) -> None:
        # Like a browser: a request sent on a kept-alive connection that the server closed at
        # that instant (e.g. an nginx reload) is sent again once (POSTs only when the server
        # closed it before any reply). HTTP errors and timeouts are never retried.
        retry = browser_retry()
        for prefix in ("http://", "https://"):
            self.client.mount(prefix, LocustHttpAdapter(pool_manager=None, max_retries=retry))
        self.client.headers["User-Agent"] = "kit-loadtest (locust)"
        self.client.verify = VERIFY
        if HOST_HEADER:
            self.client.headers["Host"] = HOST_HEADER
            follow_locally(self.client, self.host.rstrip("/"))
        self.username = _next_username(self.environment)

    def step(self, name: str, path: str, *, method: str = "GET", data: dict | None = None,
             logged_in: bool = True, expect: str | None = None, redirect_to: str | None = None) -> str | None:
        """One journey step: fails on Moodle error pages and lost sessions, not only HTTP status.

        Redirects are followed here, each as its own request named "<step> (redirect)": that
        is how the edge and Prometheus count them, so the step's row times its page alone
        and the run's p95 compares with `kit status`. With redirect_to, the step is a form
        post whose success is a redirect there (not followed).
        """
        url, verb, body = path, method, data
        for hop in range(MAX_REDIRECTS + 1):
            label = name if hop == 0 else f"{name} (redirect)"
            with self.client.request(verb, url, data=body, name=label, catch_response=True, timeout=TIMEOUT,
                                     allow_redirects=False) as resp:
                text = resp.text or ""
                if redirect_to is None and hop < MAX_REDIRECTS and resp.is_redirect:
                    target = self.client.get_redirect_target(resp)
                    if target:
                        resp.success()
                        url = urljoin(resp.url, target)
                        if resp.status_code in (301, 302, 303):  # as browsers do: the next hop is a GET
                            verb, body = "GET", None
                        continue
                if redirect_to is not None:
                    location = resp.headers.get("Location", "")
                    reason = None if resp.status_code in (302, 303) and redirect_to in location else \
                        pages.problem(text, status=resp.status_code, logged_in=logged_in) or \
                        f"expected a redirect to {redirect_to}, got HTTP {resp.status_code} {location}"
                else:
                    reason = pages.problem(text, status=resp.status_code, logged_in=logged_in, expect=expect)
                if reason and resp.status_code == 0 and getattr(resp, "error", None) is not None:
                    reason = f"{reason}: {type(resp.error).__name__}: {str(resp.error)[:160]}"
                if reason:
                    resp.failure(reason)
                    _keep_failed_page(name, resp, reason)
                    return None
                resp.success()
                return text
        return None  # not reached: the last hop is always judged

    def think(self) -> None:
        time.sleep(self.wait_time())



class MoodleStudent(MoodleUser):
    """One student walking Moodle's 14-step test-plan journey, with think time."""

    abstract = JOURNEY != "moodle"

    @task
    def journey(self) -> None:
        try:
            self.moodle_test_plan()
        finally:
            # Every journey starts logged out, even when a step failed half-way.
            self.client.cookies.clear()

    def moodle_test_plan(self) -> None:
        t = TARGET
        course = f"/course/view.php?id={t['course_id']}"
        if self.step("01 frontpage (not logged in)", "/", logged_in=False) is None:
            return
        self.think()
        login_page = self.step("02 login page", "/login/index.php", logged_in=False, expect='name="logintoken"')
        token = pages.logintoken(login_page or "")
        if not token:
            return
        self.think()
        if self.step("03 login", "/login/index.php", method="POST", expect="You are logged in as",
                     data={"username": self.username, "password": PASSWORD, "logintoken": token}) is None:
            return
        self.think()
        # One of the seeded discussions: replies spread, so no thread grows through the run.
        thread = random.choice(t.get("discussions") or [{"discussion_id": t["discussion_id"],
                                                         "reply_post_id": t["reply_post_id"]}])
        for name, path in (("04 frontpage (logged in)", "/"), ("05 course", course),
                           ("06 page activity", f"/mod/page/view.php?id={t['page_cmid']}"),
                           ("07 course again", course),
                           ("08 forum", f"/mod/forum/view.php?id={t['forum_cmid']}"),
                           ("09 discussion", f"/mod/forum/discuss.php?d={thread['discussion_id']}")):
            if self.step(name, path) is None:
                return
            self.think()
        form_page = self.step("10 reply form", f"/mod/forum/post.php?reply={thread['reply_post_id']}",
                              expect="message[itemid]")
        form = pages.reply_form(form_page or "")
        if form is None:
            return
        self.think()
        reply = {
            "course": t["course_id"], "forum": 0, "discussion": thread["discussion_id"], "userid": form["userid"] or 0,
            "groupid": 0, "edit": 0, "reply": thread["reply_post_id"], "sesskey": form["sesskey"],
            "_qf__mod_forum_post_form": 1, "subject": pages.REPLY_SUBJECT,
            "message[itemid]": form["message[itemid]"], "message[format]": 1,
            "message[text]": "I am the test plan reply message", "parent": thread["reply_post_id"],
            "subscribe": 1, "attachments": form["attachments"], "timestart": 0, "timeend": 0,
            "submitbutton": "Post to forum",
        }
        if self.step("11 reply post", "/mod/forum/post.php", method="POST", data=reply) is None:
            return
        self.think()
        if self.step("12 course once more", course) is None:
            return
        self.think()
        if self.step("13 participants", f"/user/index.php?id={t['course_id']}") is None:
            return
        self.think()
        self.step("14 logout", f"/login/logout.php?sesskey={form['sesskey']}", logged_in=False)


class ExamStudent(MoodleUser):
    """The 9 a.m. exam: log in within a window, then everyone starts the quiz at once."""

    abstract = JOURNEY != "exam"

    @task
    def journey(self) -> None:
        t = TARGET
        if not t.get("quiz_cmid"):
            raise StopUser()
        exam_start = float(os.environ.get("KIT_LT_EXAM_START", "0")) or (time.time() + WINDOW)
        time.sleep(random.uniform(0, max(0.0, exam_start - time.time() - 1)))
        login_page = self.step("E1 login page", "/login/index.php", logged_in=False, expect='name="logintoken"')
        token = pages.logintoken(login_page or "")
        if not token or self.step("E2 login", "/login/index.php", method="POST", expect="You are logged in as",
                                  data={"username": self.username, "password": PASSWORD,
                                        "logintoken": token}) is None:
            raise StopUser()
        view = self.step("E3 quiz page", f"/mod/quiz/view.php?id={t['quiz_cmid']}", expect="startattempt.php")
        time.sleep(max(0.0, exam_start - time.time()))
        start = pages.form_inputs(view or "", action_contains="startattempt.php")
        if not start.get("sesskey"):
            raise StopUser()
        attempt = self.step("E4 start attempt", "/mod/quiz/startattempt.php", method="POST", data=start,
                            expect='id="responseform"')
        fields = pages.form_inputs(attempt or "", form_id="responseform")
        if not fields:
            raise StopUser()
        EXAM_TIMES["opened"].append(time.time())
        time.sleep(random.uniform(THINK_MIN, THINK_MAX) * 3)
        for name in [k for k in fields if k.endswith(":sequencecheck")]:
            fields[name.replace(":sequencecheck", "answer")] = random.choice(["0", "1"])
        fields["finishattempt"] = "1"
        if self.step("E5 submit attempt", "/mod/quiz/processattempt.php", method="POST", data=fields,
                     redirect_to="/mod/quiz/review.php") is not None:
            EXAM_TIMES["submitted"].append(time.time())
        raise StopUser()


@events.test_stop.add_listener
def save_exam_times(environment, **_kwargs) -> None:
    if JOURNEY != "exam" or not EXAM_DIR:
        return
    os.makedirs(EXAM_DIR, exist_ok=True)
    with open(os.path.join(EXAM_DIR, f"exam-{os.getpid()}.json"), "w", encoding="utf-8") as fh:
        json.dump(EXAM_TIMES, fh)


if os.environ.get("KIT_LT_SHAPE") == "surge":

    class SurgeShape(LoadTestShape):
        """Stepped surge: +STEP users every STEP_TIME seconds up to PEAK, hold one step, stop."""

        peak = int(os.environ.get("KIT_LT_PEAK", "100"))
        step = int(os.environ.get("KIT_LT_STEP", "10"))
        step_time = float(os.environ.get("KIT_LT_STEP_TIME", "30"))
        spawn_rate = float(os.environ.get("KIT_LT_SPAWN_RATE", "10"))

        def tick(self):
            run_time = self.get_run_time()
            steps = -(-self.peak // self.step)
            if run_time >= (steps + 1) * self.step_time:
                return None
            users = min(self.peak, (int(run_time // self.step_time) + 1) * self.step)
            return users, self.spawn_rate
