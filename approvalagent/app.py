"""Approval agent: an agent whose tool waits for a person's approval, durably.

The agent evaluates insurance claims; for large ones its tool `human_approval` asks a
person and waits for the answer. The wait is an awakeable: a durable promise with an id
that another handler completes, here `ClaimReview/<reviewId>/approve` (or `reject`),
which the reviewer calls with curl; it refuses an unknown review (404) and a second
answer (409).

    run("... 3000USD ...")
      +-> model call (step)            -> human_approval(claim)
      +-> tool human_approval
      |     +-> awakeable, ClaimReview/<reviewId> opened with its id
      |     +-> step "request review"  -> notify a person: here, a log line with the curl
      |     +-> wait ...................  (suspended: no process needs to run)
      |                                   <- ClaimReview/<reviewId>/approve: resolves it
      +-> model call (step)            -> "Your claim ... was approved by a reviewer."

- While it waits, the invocation can be suspended: the service may be stopped, crash or
  be redeployed; the approval is kept by Restate and the run resumes when it arrives.
- `HumanClaimApprovalWithTimeoutsAgent` races the approval against a durable timer
  (`APPROVAL_TIMEOUT_SECONDS`, 3 hours by default): whichever comes first wins, and the
  journal records which, so a replay takes the same branch. The timer survives crashes
  too. At the deadline the review is closed (`expired`): a late answer gets 409.
"""

import functools
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import restate
from agents import Agent, set_default_openai_client
from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from restate.ext.openai import DurableRunner, durable_function_tool, restate_context

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    model: str = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")
    model_max_attempts: int = int(os.environ.get("MODEL_MAX_ATTEMPTS", "3"))
    model_retry_interval: timedelta = timedelta(
        seconds=float(os.environ.get("MODEL_RETRY_INTERVAL_SECONDS", "2"))
    )
    approval_timeout: timedelta = timedelta(
        seconds=float(os.environ.get("APPROVAL_TIMEOUT_SECONDS", str(3 * 3600)))
    )
    # where the reviewer's curl goes: Restate's ingress
    ingress_url: str = os.environ.get("RESTATE_INGRESS_URL", "http://localhost:8080")


SETTINGS = Settings()


class ClaimPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)


class InsuranceClaim(BaseModel):
    """An insurance claim, as the model reads it from the user's message."""

    date: str
    amount: float
    currency: str
    reason: str


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Validate a JSON body; a 400 naming each bad field if it is wrong."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise restate.TerminalError(f"Invalid request: {problems}", status_code=400) from None


@functools.cache
def use_restate_for_model_retries() -> None:
    """Restate, not the OpenAI client, retries failed model calls (each one journaled,
    at most MODEL_MAX_ATTEMPTS). Made on first use: the client needs OPENAI_API_KEY."""
    set_default_openai_client(AsyncOpenAI(max_retries=0), use_for_tracing=False)


# --- the reviews: one object per review, so that an answer is checked before it counts ---
#
# Restate's own `/restate/awakeables/<id>/resolve` answers 202 to any well-formed id, also
# one that does not exist or was already resolved (measured on restate-server 1.7): the
# reviewer would never learn that an answer did not count. `ClaimReview/<reviewId>` holds
# the awakeable's id and the review's status and resolves the awakeable itself.

PENDING = "pending"

claim_review = restate.VirtualObject("ClaimReview")


@claim_review.handler(name="open", ingress_private=True)
async def open_review(ctx: restate.ObjectContext, approval_id: str) -> None:
    ctx.set("approvalId", approval_id)
    ctx.set("status", PENDING)


async def decide(ctx: restate.ObjectContext, approved: bool) -> str:
    status = await ctx.get("status", type_hint=str)
    if status is None:
        raise restate.TerminalError(f"No claim review {ctx.key()}", status_code=404)
    if status != PENDING:
        raise restate.TerminalError(
            f"Claim review {ctx.key()} is already {status}", status_code=409
        )
    approval_id = await ctx.get("approvalId", type_hint=str)
    assert approval_id is not None
    decision = "approved" if approved else "rejected"
    ctx.resolve_awakeable(approval_id, approved)
    ctx.set("status", decision)
    logger.info("Claim review %s %s", ctx.key(), decision)
    return f"Claim review {ctx.key()}: {decision}"


@claim_review.handler(name="approve")
async def approve(ctx: restate.ObjectContext) -> str:
    """The reviewer approves the claim."""
    return await decide(ctx, True)


@claim_review.handler(name="reject")
async def reject(ctx: restate.ObjectContext) -> str:
    """The reviewer rejects the claim."""
    return await decide(ctx, False)


@claim_review.handler(name="expire", ingress_private=True)
async def expire(ctx: restate.ObjectContext) -> bool:
    """The agent stopped waiting: later answers are refused. False if one came first."""
    if await ctx.get("status", type_hint=str) != PENDING:
        return False
    ctx.set("status", "expired")
    return True


# --- the tools ------------------------------------------------------------------------------


def request_review(claim: InsuranceClaim, review_id: str) -> None:
    """Notify a reviewer. A real system would send an email or open a ticket; the log line
    tells the reviewer how to answer."""
    logger.info("Human review %s requested: %s", review_id, claim.model_dump_json())
    logger.info(
        "Approve with: curl -X POST %s/ClaimReview/%s/approve   (or .../reject)",
        SETTINGS.ingress_url,
        review_id,
    )


async def ask_for_approval(claim: InsuranceClaim) -> tuple[str, restate.RestateDurableFuture[bool]]:
    """Open a review (an awakeable behind a ClaimReview object) and notify a reviewer."""
    ctx = restate_context()
    review_id = str(ctx.uuid())
    approval_id, approval = ctx.awakeable(type_hint=bool)
    await ctx.object_call(open_review, key=review_id, arg=approval_id)
    await ctx.run_typed("request review", request_review, claim=claim, review_id=review_id)
    return review_id, approval


def verdict(approved: bool) -> str:
    logger.info("The reviewer %s the claim", "approved" if approved else "rejected")
    return "Approved" if approved else "Rejected"


@durable_function_tool
async def human_approval(claim: InsuranceClaim) -> str:
    """Ask a person to approve or reject a claim; waits for their answer."""
    _, approval = await ask_for_approval(claim)
    return verdict(await approval)


@durable_function_tool(name_override="human_approval")
async def human_approval_with_timeout(claim: InsuranceClaim) -> str:
    """Ask a person to approve or reject a claim; waits for their answer, for a while."""
    ctx = restate_context()
    review_id, approval = await ask_for_approval(claim)
    match await restate.select(
        approval=approval, timeout=ctx.sleep(SETTINGS.approval_timeout, name="review deadline")
    ):
        case ["approval", approved]:
            return verdict(approved)
        case _:
            if not await ctx.object_call(expire, key=review_id, arg=None):
                return verdict(await approval)  # answered just before the deadline
            logger.info("No answer to review %s within %s", review_id, SETTINGS.approval_timeout)
            return "Approval timed out - evaluate the claim yourself"


INSTRUCTIONS = """You are an insurance claim evaluation agent. Use these rules:
- if the amount is more than 1000, ask for human approval using tools;
- if the amount is 1000 or less, decide by yourself."""

agent = Agent(
    name="ClaimApprovalAgent",
    instructions=INSTRUCTIONS,
    tools=[human_approval],
    model=SETTINGS.model,
)
agent_with_timeout = agent.clone(tools=[human_approval_with_timeout])


async def evaluate(claim_agent: Agent[None], body: bytes) -> str:
    prompt = parse(ClaimPrompt, body)
    use_restate_for_model_retries()
    model_retries = restate.RunOptions[None](
        max_attempts=SETTINGS.model_max_attempts,
        initial_retry_interval=SETTINGS.model_retry_interval,
    )
    result = await DurableRunner.run(claim_agent, prompt.message, run_options=model_retries)
    answer = str(result.final_output)
    logger.info("The agent answered: %s", answer)
    return answer


approval_agent = restate.Service("HumanClaimApprovalAgent")


@approval_agent.handler(name="run", input_serde=restate.serde.BytesSerde())
async def run(ctx: restate.Context, body: bytes) -> str:
    """Evaluate the claim in the message; large claims wait for a person's approval."""
    return await evaluate(agent, body)


approval_agent_with_timeout = restate.Service("HumanClaimApprovalWithTimeoutsAgent")


@approval_agent_with_timeout.handler(name="run", input_serde=restate.serde.BytesSerde())
async def run_with_timeout(ctx: restate.Context, body: bytes) -> str:
    """The same, but a claim waits at most APPROVAL_TIMEOUT_SECONDS for a person."""
    return await evaluate(agent_with_timeout, body)


services: list[restate.Service | restate.VirtualObject] = [
    approval_agent,
    approval_agent_with_timeout,
    claim_review,
]
app = restate.app(services)
