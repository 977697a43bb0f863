"""A tiny step runner: each step prints PASS or FAIL with its reason, and a failed step
does not stop the ones after it (those that need its result fail saying so)."""

import inspect
import time


class StepFailed(Exception):
    pass


def check(condition, reason):
    """Fails the running step with `reason` unless `condition` holds."""
    if not condition:
        raise StepFailed(reason)


class Runner:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.state = {}

    def need(self, *keys):
        """The results of earlier steps; fails the running step if one of them failed."""
        missing = [k for k in keys if k not in self.state]
        if missing:
            raise StepFailed(f"needs {', '.join(missing)} from an earlier step that failed")
        values = [self.state[k] for k in keys]
        return values[0] if len(values) == 1 else values

    async def step(self, name, fn):
        started = time.monotonic()
        try:
            reason = fn()
            if inspect.isawaitable(reason):
                reason = await reason
        except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
            self.failed += 1
            kind = "" if isinstance(e, StepFailed) else f"{type(e).__name__}: "
            print(f"FAIL {name}: {kind}{e}", flush=True)
            return
        self.passed += 1
        ms = (time.monotonic() - started) * 1000
        print(f"PASS {name}: {reason} ({ms:.0f} ms)", flush=True)
