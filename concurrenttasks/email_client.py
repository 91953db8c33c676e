"""A stand-in for the email service: it logs the emails it would send.

The email carries the verification link; here it is the curl command that resolves the
awakeable, so you can "click" it from a terminal.
"""

import restate

logger = restate.getLogger(__name__)


def verification_command(ingress_url: str, awakeable_id: str) -> str:
    return f"curl {ingress_url}/restate/awakeables/{awakeable_id}/resolve --json 'true'"


def send_verification_email(email: str, ingress_url: str, awakeable_id: str) -> None:
    logger.info("Sending email to %s", email)
    logger.info("Verify by clicking: %s", verification_command(ingress_url, awakeable_id))


def send_reminder(email: str, ingress_url: str, awakeable_id: str) -> None:
    logger.info("Sending reminder to %s", email)
    logger.info("Verify by clicking: %s", verification_command(ingress_url, awakeable_id))
