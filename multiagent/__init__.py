"""Multi-agent: specialists by handoff, remote agents as services, a workflow as a tool."""
