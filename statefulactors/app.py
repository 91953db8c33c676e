"""Stateful actors and state machines.

The Virtual Object `MachineOperator` is a state machine per machine id (the object key):

            setUp (5 s transition)
    DOWN  ------------------------>  UP
     ^                                |
     +--------------------------------+
            tearDown (5 s transition)

- One object per key: many machines run in parallel, each has its own state `state`.
- One transition at a time per key: Restate runs the calls to one object one after
  another, so a `tearDown` sent while `setUp` is in progress waits for it; no locks.
- Each transition is durable: its steps are journaled and the transition time is a
  durable timer, so a crash in the middle resumes where it stopped instead of starting
  over, and a transient failure is retried until the transition completes.
"""

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import restate

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # how long bringing a machine up or down takes (a durable timer)
    transition_duration: timedelta = field(
        default_factory=lambda: timedelta(
            seconds=float(os.environ.get("TRANSITION_DURATION_SECONDS", "5"))
        )
    )
    # how many attempts of each transition fail with "A failure happened!" before one
    # succeeds: the original fails at random; this shows the same retries, deterministically
    transition_failed_attempts: int = field(
        default_factory=lambda: int(os.environ.get("TRANSITION_FAILED_ATTEMPTS", "1"))
    )


SETTINGS = Settings()

# Attempts seen per (invocation, transition) in this process: drives the simulated failure.
_attempts: Counter[str] = Counter()


def begin_transition(invocation_id: str, machine_id: str, target: str) -> None:
    """Start moving the machine; fails transiently on its first attempts (see Settings)."""
    logger.info("%s beginning transition to %s", machine_id, target)
    attempt = f"{invocation_id}/{target}"
    _attempts[attempt] += 1
    if _attempts[attempt] <= SETTINGS.transition_failed_attempts:
        logger.error("A failure happened!")
        raise RuntimeError("A failure happened!")
    del _attempts[attempt]  # the step succeeded: it is journaled and never runs again


def end_transition(machine_id: str, outcome: str) -> None:
    logger.info("%s is now %s", machine_id, outcome)


async def transition(ctx: restate.ObjectContext, target: str, outcome: str) -> None:
    machine_id = ctx.key()
    # a failure inside this step is retried (the invocation attempt restarts from the journal)
    await ctx.run_typed(
        f"begin transition to {target}",
        begin_transition,
        invocation_id=ctx.request().id,
        machine_id=machine_id,
        target=target,
    )
    await ctx.sleep(SETTINGS.transition_duration, name=f"transition to {target}")
    await ctx.run_typed(
        f"end transition to {target}", end_transition, machine_id=machine_id, outcome=outcome
    )


machine_operator = restate.VirtualObject("MachineOperator")


@machine_operator.handler(name="setUp")
async def set_up(ctx: restate.ObjectContext) -> str:
    """Bring the machine (the object key) up, unless it is up already."""
    machine_id = ctx.key()
    if await ctx.get("state", type_hint=str) == "UP":
        return f"{machine_id} is already running"
    await transition(ctx, "UP", "running")
    ctx.set("state", "UP")
    return f"{machine_id} is now running"


@machine_operator.handler(name="tearDown")
async def tear_down(ctx: restate.ObjectContext) -> str:
    """Bring the machine down, if it is up."""
    machine_id = ctx.key()
    if await ctx.get("state", type_hint=str) != "UP":
        return f"{machine_id} is not up, cannot tear down"
    await transition(ctx, "down", "down")
    ctx.set("state", "DOWN")
    return f"{machine_id} is now down"


services = [machine_operator]
app = restate.app(services)
