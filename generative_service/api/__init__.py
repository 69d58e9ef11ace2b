"""The HTTP gateway (FastAPI): app factory, routes, dependencies, error handlers."""

from generative_service.api.app import create_app

__all__ = ["create_app"]
