"""Multi-agent: routing by handoff, remote agents as services, a workflow as a tool.

An insurance claim goes to the intake agent, which hands it off to the specialist for its
kind (medical or car). The specialist asks two remote agents for their view (other Restate
services, deployed apart: `remote/app.py`) and pays what it approves through a workflow:

    run(claim) --> IntakeAgent --handoff--> MedicalSpecialist | CarSpecialist
                                              |-- check_eligibility --> EligibilityAgent (remote)
                                              |-- check_fraud -------> FraudAgent (remote)
                                              '-- pay_claim ---------> ClaimPayout/<claimId>

- Handoffs happen inside one agent run, whose every model call `DurableRunner` journals:
  after a crash the run resumes with the same specialist, the same answers.
- `MultiAgentClaimApproval` is a Virtual Object per claim id: it remembers the
  conversation (`use_restate_session`) and the agent that handled the claim last, so a
  resubmitted claim goes straight to that specialist, never two runs at once.
- A remote agent is called through Restate (`ctx.service_call`): if its deployment
  crashes mid-call, Restate retries it there, and the caller waits, suspended, for the one
  answer.
- The payout is a workflow (`ClaimPayout`) keyed by the claim id: several durable steps
  behind one tool call, and at most one payout per claim, however often the model asks.
"""

import os
from dataclasses import dataclass
from typing import Any

import restate
from agents import Agent, RunContextWrapper, Tool, TResponseInputItem
from restate.ext.openai import durable_function_tool, restate_context

from .common import RAW, ClaimReview, InsuranceClaim, Model, parse, run_agent
from .remote.app import run_eligibility_agent, run_fraud_agent

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # the model every agent uses (the provider is OPENAI_BASE_URL, or OpenAI)
    model: str = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")
    # model calls one claim's run may take (handoffs and tool rounds included)
    max_turns: int = int(os.environ.get("AGENT_MAX_TURNS", "10"))


SETTINGS = Settings()


# --- the payout workflow, used as a tool -------------------------------------------------------


class Payout(Model):
    amount: float


claim_payout = restate.Workflow("ClaimPayout")


def transfer(claim_id: str, amount: float) -> str:
    logger.info("Transferred %.2f for claim %s", amount, claim_id)
    return f"transfer of {amount:.2f} for claim {claim_id}"


def send_notice(claim_id: str, receipt: str) -> None:
    logger.info("Sent the payout notice for claim %s: %s", claim_id, receipt)


@claim_payout.main(name="run", input_serde=RAW, ingress_private=True)
async def pay(ctx: restate.WorkflowContext, body: bytes) -> str:
    """Pay a claim: runs once per claim id (the workflow id), its steps exactly once."""
    payout = parse(Payout, body)
    receipt = await ctx.run_typed(
        "transfer money", transfer, claim_id=ctx.key(), amount=payout.amount
    )
    ctx.set("receipt", receipt)
    await ctx.run_typed("send payout notice", send_notice, claim_id=ctx.key(), receipt=receipt)
    return receipt


@claim_payout.handler(name="receipt")
async def receipt(ctx: restate.WorkflowSharedContext) -> str:
    """The claim's payout receipt; 404 while it has not been paid."""
    paid = await ctx.get("receipt", type_hint=str)
    if paid is None:
        raise restate.TerminalError(f"claim {ctx.key()} has not been paid", status_code=404)
    return paid


# --- the specialists' tools ---------------------------------------------------------------------


class ClaimContext(Model):
    """What the tools know about the claim under review (never sent to the model)."""

    claim_id: str
    claim: InsuranceClaim


def review_of(wrapper: RunContextWrapper[ClaimContext]) -> bytes:
    claim = wrapper.context
    return ClaimReview(claim_id=claim.claim_id, claim=claim.claim).model_dump_json().encode()


@durable_function_tool
async def check_eligibility(wrapper: RunContextWrapper[ClaimContext]) -> str:
    """Ask the eligibility agent whether the claim is eligible for reimbursement."""
    return await restate_context().service_call(run_eligibility_agent, arg=review_of(wrapper))


@durable_function_tool
async def check_fraud(wrapper: RunContextWrapper[ClaimContext]) -> str:
    """Ask the fraud agent how likely the claim is fraudulent."""
    return await restate_context().service_call(run_fraud_agent, arg=review_of(wrapper))


@durable_function_tool
async def pay_claim(wrapper: RunContextWrapper[ClaimContext], amount: float) -> str:
    """Pay the approved amount of the claim to the customer.

    Args:
        amount: the approved amount, at most the amount claimed.
    """
    ctx, claim = restate_context(), wrapper.context
    if not 0 < amount <= claim.claim.amount:  # a rule the model cannot talk its way around
        return f"Refused: the amount must be above 0 and at most {claim.claim.amount:.2f}."
    try:  # the workflow runs once per claim: if it ran, answer with its receipt
        paid = await ctx.workflow_call(receipt, key=claim.claim_id, arg=None)
        return f"already paid ({paid})"
    except restate.TerminalError as error:
        if error.status_code != 404:
            raise
    arg = Payout(amount=amount).model_dump_json().encode()
    return await ctx.workflow_call(pay, key=claim.claim_id, arg=arg)


# --- the agents ---------------------------------------------------------------------------------

SPECIALIST_TOOLS: list[Tool] = [check_eligibility, check_fraud, pay_claim]

medical_agent = Agent[ClaimContext](
    name="MedicalSpecialist",
    handoff_description="Handles medical insurance claims, from intake to decision.",
    instructions="Review medical claims for coverage and necessity. Check eligibility and "
    "fraud risk with your tools. Approve claims up to 50,000 and pay them with pay_claim; "
    "deny the others. Answer with your decision and the payout.",
    tools=SPECIALIST_TOOLS,
    model=SETTINGS.model,
)
car_agent = Agent[ClaimContext](
    name="CarSpecialist",
    handoff_description="Handles car insurance claims, from intake to decision.",
    instructions="Assess car claims for liability and damage. Check the fraud risk with your "
    "tools. Approve claims up to 25,000 and pay them with pay_claim; deny the others. "
    "Answer with your decision and the payout.",
    tools=SPECIALIST_TOOLS,
    model=SETTINGS.model,
)
intake_agent = Agent[ClaimContext](
    name="IntakeAgent",
    instructions="Route insurance claims to the appropriate specialist.",
    handoffs=[medical_agent, car_agent],
    model=SETTINGS.model,
)
AGENTS = {agent.name: agent for agent in (intake_agent, medical_agent, car_agent)}


claim_approval = restate.VirtualObject("MultiAgentClaimApproval")


@claim_approval.handler(name="run", input_serde=RAW)
async def run(ctx: restate.ObjectContext, body: bytes) -> str:
    """Decide on the claim (the object key is its id): intake, then the specialist."""
    claim = parse(InsuranceClaim, body)
    # a claim seen before goes back to the agent that handled it, with the conversation
    last_agent = await ctx.get("lastAgent", type_hint=str) or intake_agent.name
    history = await ctx.get("conversation", type_hint=list[Any]) or []
    prompt: TResponseInputItem = {
        "role": "user",
        "content": f"Claim {ctx.key()}: {claim.model_dump_json()}",
    }
    result = await run_agent(
        AGENTS.get(last_agent, intake_agent),
        [*history, prompt],
        context=ClaimContext(claim_id=ctx.key(), claim=claim),
        max_turns=SETTINGS.max_turns,
    )
    ctx.set("lastAgent", result.last_agent.name)
    ctx.set("conversation", result.to_input_list())
    logger.info("Claim %s decided by %s", ctx.key(), result.last_agent.name)
    return str(result.final_output)


services: list[restate.VirtualObject | restate.Workflow] = [claim_approval, claim_payout]
app = restate.app(services)
