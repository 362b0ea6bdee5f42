"""Schemathesis hooks for the contract run (tests/api/contract.rs).

Past the door, not only at it:

- Each generated request comes from its own client address: the server trusts the loopback
  proxy in that run and keys its per-client rate limit by `X-Forwarded-For`, so the limiter
  does not hide the logic behind 429s. Addresses come from TEST-NET-2 (198.51.100.0/24) and
  2001:db8::/32, which no real client has.
- A Stripe webhook is signed with the run's webhook secret over the exact bytes sent, as
  Stripe signs, so the fuzzer reaches the event parser instead of the signature check.
- The signed-in operations get a real session of the run's account and its CSRF token, and
  `Origin` set to the server's own, so the fuzzer reaches the forms' logic (every other
  licence form names the account's real purchase). A session a fuzzed
  request ends (signing out) is replaced by a new sign-in. The account's password is never put
  into a generated body: nothing here can change it or delete the account.
- Every answer is counted per operation and status, and the fuzzing phase's apart as well
  (`PEXPER_CONTRACT_COUNTS`), so the test can require each operation's fuzzed cases, answers
  past the door, and a 2xx, with data, from each that has a date.

The test sets PEXPER_CONTRACT_BASE, _SECRET, _EMAIL, _PASSWORD and _COUNTS.
"""

import collections
import hashlib
import hmac
import itertools
import json
import os
import threading
import time

import requests
import schemathesis

BASE = os.environ["PEXPER_CONTRACT_BASE"]
SECRET = os.environ["PEXPER_CONTRACT_SECRET"]
EMAIL = os.environ["PEXPER_CONTRACT_EMAIL"]
PASSWORD = os.environ["PEXPER_CONTRACT_PASSWORD"]
COUNTS = os.environ["PEXPER_CONTRACT_COUNTS"]

SESSION_COOKIE = "__Host-pexper-session"
DEVICE_COOKIE = "__Host-pexper-device"
# Operations that end the session they are sent with.
ENDS_SESSION = {"POST /account/sign-out", "DELETE /v1/sessions/current"}
# Signed in: the reads (no CSRF token), and the forms (the token in the form's `csrf`).
SIGNED_IN_READS = {"GET /account", "GET /v1/account"}
SIGNED_IN_FORMS = {
    "POST /account/sign-out",
    "POST /account/sessions/end-others",
    "POST /account/password",
    "POST /account/licences/resend",
    "POST /account/confirm-password",
    "POST /account/export",
    "POST /account/delete",
}

_addresses = itertools.count()
_lock = threading.Lock()
_session = {}
_device = {}
_counts = collections.Counter()
_fuzzed = collections.Counter()


def _client_address():
    n = next(_addresses)
    if n % 2:
        return f"2001:db8:{(n >> 16) & 0xFFFF:x}:{n & 0xFFFF:x}::1"
    return f"198.51.{(n >> 8) % 256}.{n % 256}"


def _signed_in():
    """The run's session cookie and CSRF token, signing in when there is none.

    The hooks sign in as a browser that did before (with the device cookie the first sign-in
    gave): counted apart from the wrong passwords the fuzzer sends with the session, which
    count against the address, so those never lock the hooks out.
    """
    with _lock:
        if "cookie" not in _session:
            headers = {"X-Forwarded-For": _client_address()}
            if "device" in _device:
                headers["Cookie"] = _device["device"]
            answer = requests.post(
                f"{BASE}/v1/sessions",
                json={"email": EMAIL, "password": PASSWORD},
                headers=headers,
                timeout=30,
            )
            assert answer.status_code == 201, f"sign-in: {answer.status_code} {answer.text}"
            for set_cookie in answer.raw.headers.getlist("Set-Cookie"):
                cookie = set_cookie.split(";", 1)[0]
                if cookie.startswith(SESSION_COOKIE + "="):
                    _session["cookie"] = cookie
                elif cookie.startswith(DEVICE_COOKIE + "="):
                    _device["device"] = cookie
            _session["csrf"] = answer.json()["csrf_token"]
            # The account's purchase, for the licence form to name one that exists.
            account = requests.get(
                f"{BASE}/v1/account",
                headers={"Cookie": _session["cookie"], "X-Forwarded-For": _client_address()},
                timeout=30,
            ).json()
            _session["purchase"] = account["purchases"][0]["id"]
        return _session["cookie"], _session["csrf"]


def _stripe_signature(case):
    # The bytes requests will send: schemathesis hands a JSON body to it as `json=`, which
    # requests encodes with the standard library's defaults and `allow_nan=False`.
    if isinstance(case.body, bytes):
        payload = case.body.decode("utf-8", "replace")
    elif case.body is None:
        payload = "null"
    elif type(case.body).__name__ == "NotSet":
        payload = ""  # No body is sent.
    else:
        payload = json.dumps(case.body, allow_nan=False)
    t = int(time.time())
    v1 = hmac.new(SECRET.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={v1}"


@schemathesis.hook
def before_call(context, case, kwargs):
    label = f"{case.operation.method.upper()} {case.operation.path}"
    headers = {**(case.headers or {}), "X-Forwarded-For": _client_address()}
    # Signed where the generated request has a signature; one without keeps none (the
    # refusal of a missing header is fuzzed too).
    if label == "POST /v1/webhooks/stripe" and "Stripe-Signature" in headers:
        headers["Stripe-Signature"] = _stripe_signature(case)
    body_has_csrf = isinstance(case.body, dict) and "csrf" in case.body
    if label in SIGNED_IN_READS or label in ENDS_SESSION or label in SIGNED_IN_FORMS:
        cookie, csrf = _signed_in()
        headers["Cookie"] = cookie
        headers["Origin"] = BASE
        if body_has_csrf:
            case.body["csrf"] = csrf
        # Every other licence form names the account's own purchase: the resend itself is
        # fuzzed, not only its "no such purchase".
        if label == "POST /account/licences/resend" and isinstance(case.body, dict) \
                and "purchase" in case.body and next(_addresses) % 2:
            case.body["purchase"] = _session["purchase"]
        # The run's account must outlive the run: its deletion is fuzzed up to the word that
        # would carry it out, which the hooks change (the refusal of a wrong word is fuzzed).
        if label == "POST /account/delete" and isinstance(case.body, dict) \
                and str(case.body.get("confirm", "")).strip() == "delete":
            case.body["confirm"] = "keep"
        if "X-CSRF-Token" in headers:
            headers["X-CSRF-Token"] = csrf
    case.headers = headers


@schemathesis.hook
def after_call(context, case, response):
    label = f"{case.operation.method.upper()} {case.operation.path}"
    with _lock:
        _counts[f"{label} {response.status_code}"] += 1
        if case.meta is not None and case.meta.phase.name == "fuzzing":
            _fuzzed[f"{label} {response.status_code}"] += 1
        if label in ENDS_SESSION and response.status_code < 400:
            _session.clear()
        with open(COUNTS + ".tmp", "w") as f:
            json.dump({"answers": _counts, "fuzzed": _fuzzed}, f)
        os.replace(COUNTS + ".tmp", COUNTS)


# A Sentry envelope is text framed by newlines: sent as the UTF-8 of the generated string.
schemathesis.serializer.alias("application/x-sentry-envelope", "text/plain")
