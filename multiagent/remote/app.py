"""Remote agents: agents that run as Restate services of their own deployment.

`python -m multiagent.remote` serves them (on PORT, 9081 in the README) apart from the
claim agents of `python -m multiagent`. The specialists call them through Restate
(`ctx.service_call`), like any other service: the call is journaled, delivered even while
this deployment is down, retried until it answers, and answered once. Deploying an agent
apart lets it scale, fail and be updated on its own.

    MedicalSpecialist --check_eligibility--> Restate --> EligibilityAgent/run
                      --check_fraud--------> Restate --> FraudAgent/run

Both handlers are ingress-private: only the specialists call them.
"""

import os
from dataclasses import dataclass

import restate
from agents import Agent

from ..common import RAW, ClaimReview, parse, run_agent

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # the model the agents use (the provider is OPENAI_BASE_URL, or OpenAI)
    model: str = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")


SETTINGS = Settings()

eligibility_agent = Agent(
    name="EligibilityAgent",
    instructions="Decide whether the claim is eligible for reimbursement. Answer eligible if "
    "it is a medical claim, not eligible otherwise.",
    model=SETTINGS.model,
)
fraud_agent = Agent(
    name="FraudAgent",
    instructions="Decide whether the claim is fraudulent. Always answer low risk, medium risk "
    "or high risk.",
    model=SETTINGS.model,
)


async def review(agent: Agent[None], question: str, body: bytes) -> str:
    request = parse(ClaimReview, body)
    result = await run_agent(
        agent, f"{question} Claim {request.claim_id}: {request.claim.model_dump_json()}"
    )
    logger.info("%s on claim %s: %s", agent.name, request.claim_id, result.final_output)
    return str(result.final_output)


eligibility_service = restate.Service("EligibilityAgent")
fraud_service = restate.Service("FraudAgent")


@eligibility_service.handler(name="run", input_serde=RAW, ingress_private=True)
async def run_eligibility_agent(ctx: restate.Context, body: bytes) -> str:
    return await review(eligibility_agent, "Is this claim eligible?", body)


@fraud_service.handler(name="run", input_serde=RAW, ingress_private=True)
async def run_fraud_agent(ctx: restate.Context, body: bytes) -> str:
    return await review(fraud_agent, "How likely is this claim fraudulent?", body)


services = [eligibility_service, fraud_service]
app = restate.app(services)
