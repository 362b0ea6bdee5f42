"""Schemathesis hooks for the contract run (tests/api/contract.rs).

Each generated request comes from its own client address: the server trusts the loopback proxy
in that run and keys its per-client rate limit by `X-Forwarded-For`, so the limiter does not
hide the logic behind 429s. Addresses come from TEST-NET-2 (198.51.100.0/24) and 2001:db8::/32,
which no real client has.
"""

import itertools

import schemathesis

_counter = itertools.count()


@schemathesis.hook
def before_call(context, case, kwargs):
    n = next(_counter)
    if n % 2:
        address = f"2001:db8:{(n >> 16) & 0xFFFF:x}:{n & 0xFFFF:x}::1"
    else:
        address = f"198.51.{(n >> 8) % 256}.{n % 256}"
    case.headers = {**(case.headers or {}), "X-Forwarded-For": address}


# A Sentry envelope is text framed by newlines: sent as the UTF-8 of the generated string.
schemathesis.serializer.alias("application/x-sentry-envelope", "text/plain")
