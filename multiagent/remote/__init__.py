"""The remote agents of multiagent: a deployment of their own (`python -m multiagent.remote`)."""
