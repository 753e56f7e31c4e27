"""A small client of the admin API for the command line (stdlib urllib: no dependency)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit


class ConnectionFailed(Exception):
    """The API could not be reached or did not answer JSON (exit 2)."""


class Refused(Exception):
    """The API answered with an error (exit 1): its status and its message."""

    def __init__(self, status: int, error: str, detail: str):
        self.status = status
        self.error = error
        self.detail = detail
        super().__init__(f"{detail} (HTTP {status} {error})")


class AdminClient:
    def __init__(self, url: str, token: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"admin URL must be http(s)://HOST:PORT, got {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                answer = json.loads(raw)
                raise Refused(err.code, str(answer["error"]), str(answer["detail"])) from None
            except (ValueError, KeyError, TypeError):
                raise Refused(err.code, "error", raw[:200].decode(errors="replace")) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConnectionFailed(f"cannot reach the admin API at {self.url}: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ConnectionFailed(f"{self.url}{path} did not answer JSON") from None

    def list(self, status: str | None = None, limit: int = 100) -> dict[str, Any]:
        query = f"?limit={limit}" + (f"&status={quote(status)}" if status else "")
        return dict(self.call("GET", f"/api/approvals{query}"))

    def show(self, request_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/approvals/{quote(request_id, safe='')}"))

    def decide(self, request_id: str, verb: str, reason: str | None) -> dict[str, Any]:
        body = {"reason": reason} if reason else {}
        return dict(self.call("POST", f"/api/approvals/{quote(request_id, safe='')}/{verb}", body))
