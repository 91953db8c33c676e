"""The patterns of the collection: the top-level folders that `python -m <name>` serves."""

import ast
import re
from dataclasses import dataclass

from devkit import ROOT, DevError


def known() -> list[str]:
    return sorted(
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and (p / "app.py").is_file() and (p / "__main__.py").is_file()
    )


def check(name: str) -> str:
    patterns = known()
    if name not in patterns:
        raise DevError(f"unknown pattern {name!r}; known patterns: {', '.join(patterns)}")
    return name


def summary(name: str) -> str:
    """First line of the pattern package's docstring."""
    tree = ast.parse((ROOT / name / "__init__.py").read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree) or ""
    return docstring.splitlines()[0] if docstring else ""


def try_it(name: str) -> str:
    """The shell code blocks of the `## Try it` section of the pattern's README."""
    readme = (ROOT / name / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Try it\s*$(.*?)(?=^## |\Z)", readme, re.S | re.M)
    if section is None:
        return f"(see {name}/README.md)"
    blocks = re.findall(r"^```shell\n(.*?)^```", section.group(1), re.S | re.M)
    return "\n".join(block.rstrip() for block in blocks)


@dataclass(frozen=True)
class KafkaSubscription:
    topic: str
    sink: str


# Patterns fed from Kafka: the topic and the handler the seed subscribes to it.
KAFKA = {
    "eventtransactions": KafkaSubscription("social-media-posts", "service://UserFeed/processPost"),
    "eventenrichment": KafkaSubscription(
        "package-location-updates", "service://PackageTracker/updateLocation"
    ),
}

# Patterns that talk to Stripe: `./dev run` gives them a local stand-in unless real keys
# (STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET) are set.
STRIPE = {"signalspayments"}


@dataclass(frozen=True)
class Serving:
    """How `./dev run` serves a pattern: the module it runs (`python -m <module>`; the
    pattern itself unless SERVING below says otherwise), the path under which that serves
    the Restate endpoint, and whether Restate must call it over HTTP/1.1 (request/response)
    because its web server speaks nothing else."""

    module: str
    path: str = ""
    use_http_11: bool = False


# Patterns whose subject is a way of serving: what `./dev run` starts, per `--server` choice
# (the first one is the default).
SERVING = {
    "webapp": {
        "hypercorn": Serving("webapp.on_hypercorn", "/restate"),
        "uvicorn": Serving("webapp.on_uvicorn", "/restate", use_http_11=True),
    },
}

# Patterns that use PostgreSQL: `./dev run` starts one (devkit/postgres.py) unless DATABASE_URL
# points at the user's own.
POSTGRES = {"database"}


@dataclass(frozen=True)
class StandIn:
    """A process of the pattern's own folder (`python -m <module>`) standing in for the
    systems the pattern calls: `./dev run` starts it first, on `port` (given to it in the
    environment variable `port_env`), waits for 200 at `/health`, and prefixes its log lines
    with `name`."""

    module: str
    port: int
    port_env: str
    name: str


# Patterns whose folder holds a stand-in for the systems they call (part of what a user runs
# and copies, so it lives in the folder, not in devkit/).
STANDINS = {
    "persistentfailures": StandIn(
        "persistentfailures.downstream", 9081, "DOWNSTREAM_PORT", "downstream"
    ),
    "observability": StandIn("observability.downstream", 9081, "PORT", "fraud-check"),
}

# Patterns traced with OpenTelemetry: `./dev run` starts the local OTLP receiver
# (devkit/otlp_receiver.py) unless a collector listens on its ports (e.g. Jaeger), gives
# restate-server the tracing endpoint, and the pattern and its stand-in the OTLP settings.
TRACED = {"observability"}

# Patterns whose walkthrough registers and removes deployments: `./dev run` starts their
# server on a state of their own, wiped at start, so that deployments registered by an
# earlier run (still "latest", or in the way of registering an address again) are gone.
FRESH_STATE = {"versioning"}

# Patterns with more than one deployment: modules that `./dev run` serves beside the pattern
# (each `python -m <module>` on its port, with the pattern's settings) and registers too.
EXTRA_DEPLOYMENTS = {"multiagent": {"multiagent.remote": 9081}}
