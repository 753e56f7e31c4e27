"""The admin HTTP server: approvals API and console (later kill switch, metrics, health)."""

from .app import AdminApp
from .auth import AuthError, Principal
from .server import AdminServer, json_error, json_response

__all__ = ["AdminApp", "AdminServer", "AuthError", "Principal", "json_error", "json_response"]
