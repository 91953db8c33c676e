"""`./dev bench`: what each pattern costs next to a no-op handler, which serving wins, and
how the Python SDK compares with the TypeScript SDK on the same handlers.

One fresh `restate-server` (throw-away base dir, free ports, the settings of `./dev run`),
every pattern served as users serve it (`python -m <pattern>`, registered like `./dev run`
registers it), the baseline `bench/noop` served by the same `__main__.py`, and the
TypeScript twins of bench/ts/. Load from `wrk`. Method and findings: bench/README.md.

One module per job:
- `wrk`: fetching wrk (Debian's package, no root) and one run of it with a Lua script;
- `meter`: CPU seconds and peak memory of process trees, the busy loop's share;
- `scenarios`: the scenarios, their TypeScript twins and the ways of serving, as data;
- `typescript`: Node and the TypeScript SDK, installed on first use, and the twins served;
- `runner`: the server, the services and the paired rounds;
- `report`: summaries, paired ratios, and bench/results/latest.{json,md,png}.
"""

from devkit.bench import typescript
from devkit.bench.meter import availability
from devkit.bench.report import cell
from devkit.bench.runner import Options, run
from devkit.bench.scenarios import BASELINE, DEFAULT, SCENARIOS, SERVINGS, TWINS
from devkit.bench.wrk import wrk_command

__all__ = [
    "BASELINE",
    "DEFAULT",
    "SCENARIOS",
    "SERVINGS",
    "TWINS",
    "Options",
    "availability",
    "cell",
    "run",
    "typescript",
    "wrk_command",
]
