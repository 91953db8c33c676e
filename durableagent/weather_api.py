"""A stand-in for a weather API: what a real one would answer, with its failure modes.

- Cities that do not exist (`Atlantis`, `El Dorado`, `Shangri-La`) are an error that no
  retry can fix: a `TerminalError`.
- Denver's station is flaky: within one agent run its first `failures` calls fail with a
  `ConnectionError`, an error that a retry fixes (the original example fails on Denver).
- Any other city gets a made-up, but stable, report.
- Each call takes `delay` seconds, as a real API call takes time.
"""

import asyncio
import hashlib

import restate

logger = restate.getLogger(__name__)

MYTHICAL = {"atlantis", "el dorado", "shangri-la"}
FLAKY = "denver"
SKIES = ["sunny", "cloudy", "rainy", "windy", "foggy", "snowy"]

_failed: dict[tuple[str, str], int] = {}  # (run id, city) -> calls failed so far


async def fetch_weather(city: str, run_id: str, delay: float, failures: int) -> str:
    """The current weather in `city`, e.g. "sunny, 23 degrees Celsius"."""
    logger.info("Fetching the weather for %s", city)
    await asyncio.sleep(delay)
    name = city.strip().lower()
    if name in MYTHICAL:
        raise restate.TerminalError(f"Unknown city: {city}", status_code=404)
    if name == FLAKY and _failed.get((run_id, name), 0) < failures:
        _failed[(run_id, name)] = _failed.get((run_id, name), 0) + 1
        logger.warning("[👻 SIMULATED] The weather API is down for %s", city)
        raise ConnectionError(f"[👻 SIMULATED] The weather API is down for {city}")
    digest = hashlib.sha256(name.encode()).digest()
    report = f"{SKIES[digest[0] % len(SKIES)]}, {digest[1] % 30} degrees Celsius"
    logger.info("Fetched the weather for %s: %s", city, report)
    return report
