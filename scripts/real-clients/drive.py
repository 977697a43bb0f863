"""Drives a running `rooms-sync simulate` through real client libraries, exchangelib for
EWS and msgraph-sdk for Graph, and prints PASS or FAIL per step. Exits non-zero on any
failure. Usage: drive.py BASE_URL (run.sh starts the simulator and passes its URL)."""

import asyncio
import os
import sys
import time

# oauthlib (under exchangelib's OAuth) refuses plain http unless told it is a local test,
# which is what its documentation says this variable is for. Set before the library loads.
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")

import ews_steps  # noqa: E402
import graph_steps  # noqa: E402
from listener import Listener  # noqa: E402
from steps import Runner  # noqa: E402


async def main(base):
    runner = Runner()
    listener = Listener()
    started = time.monotonic()
    try:
        await ews_steps.run(runner, base, listener)
        await graph_steps.run(runner, base, listener)
    finally:
        listener.close()
    for error in listener.errors:
        print(f"listener error: {error}")
    print(f"real clients against the simulator: {time.monotonic() - started:.1f} s")
    print(f"{runner.passed} passed, {runner.failed} failed")
    return 0 if runner.failed == 0 and not listener.errors else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: drive.py BASE_URL")
    sys.exit(asyncio.run(main(sys.argv[1].rstrip("/"))))
