"""``[web]`` in config.toml: where the web console listens, HTTPS, how long a login lasts, the login limit."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from limits import parse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_LISTEN = "127.0.0.1:8765"
# What an account may be: admins see every page, reviewers the review queue and conversations.
ROLES = ("admin", "reviewer")


class WebSettings(BaseModel):
    """``[web]``: the console ``botkit web`` serves (and ``botkit run`` too with ``enabled = true``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="serve the console inside `botkit run` too")
    listen: str = Field(DEFAULT_LISTEN, description="HOST:PORT to listen on; anything but loopback needs HTTPS")
    https: bool = Field(
        False,
        description="browsers reach the console over HTTPS (a reverse proxy in front, or certfile/keyfile): "
        "the session cookie gets Secure and HSTS is sent",
    )
    certfile: Path | None = Field(None, description="TLS certificate (PEM) to serve HTTPS directly")
    keyfile: Path | None = Field(None, description="TLS private key (PEM) of certfile")
    session_hours: int = Field(12, ge=1, le=24 * 30, description="how long a login lasts")
    login_limit: str = Field(
        "10/minute",
        description="failed logins allowed per account name and per client address "
        "(counted in [plugins.ratelimit] storage when that is Redis, else per process)",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return check_listen(value)

    @field_validator("login_limit")
    @classmethod
    def _limit(cls, value: str) -> str:
        try:
            parse(value)
        except ValueError:
            raise ValueError("must be 'N/period', e.g. '10/minute'") from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> WebSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together: set both to serve HTTPS, or neither")
        if self.certfile is not None:
            self.https = True
        return self

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything


def check_listen(value: str) -> str:
    """``value`` if it is ``HOST:PORT``; ``ValueError`` saying what to write otherwise."""
    host, port = split_listen(value)
    if not host or not 0 < port < 65536:
        raise ValueError("must be HOST:PORT, e.g. '127.0.0.1:8765'")
    return value


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.strip("[]")  # [::1]:8765
    try:
        return host, int(port)
    except ValueError:
        return host, 0
