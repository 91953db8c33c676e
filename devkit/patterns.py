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

# Patterns that use PostgreSQL: `./dev run` starts one (devkit/postgres.py) unless DATABASE_URL
# points at the user's own.
POSTGRES = {"database"}

# Patterns with more than one deployment: modules that `./dev run` serves beside the pattern
# (each `python -m <module>` on its port, with the pattern's settings) and registers too.
EXTRA_DEPLOYMENTS = {"multiagent": {"multiagent.remote": 9081}}
