"""Serving inside an existing web app: FastAPI routes and Restate handlers on one port."""
