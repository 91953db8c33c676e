"""A child for tests/test_forkserver.py: prints what it was given, then ends as FORKED_END
says (`exit`: SystemExit with that code or message; `raise`: an uncaught exception; `wait`:
until a signal; default: returns)."""

import os
import signal
import sys

print(f"argv0={sys.argv[0]}")
print(f"cwd={os.getcwd()}")
print(f"setting={os.environ.get('FORKED_SETTING')}")
print(f"path0={sys.path[0]}")
print(f"main={__name__}", flush=True)
end = os.environ.get("FORKED_END", "")
if end.startswith("exit:"):
    value = end.removeprefix("exit:")
    sys.exit(int(value) if value.isdigit() else value)
if end == "raise":
    raise RuntimeError("the child failed")
if end == "wait":
    print("waiting", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # a handler runs: exit code 3
    while True:
        signal.pause()
