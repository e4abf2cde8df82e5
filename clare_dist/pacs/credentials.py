"""PACS credentials, from the environment only: a command line is visible to every user of the
machine (`ps`) and lands in shell histories and job specs, an environment variable does not.
On Kubernetes the variables come from a Secret (deploy/kuberay/rayjob-embed-pacs.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

ENV_USER = "CLARE_PACS_USER"
ENV_PASSWORD = "CLARE_PACS_PASSWORD"
ENV_TOKEN = "CLARE_PACS_TOKEN"


@dataclass(frozen=True)
class Credentials:
    """HTTP basic (user and password) or a bearer token, or none. Never printed: no field is in the repr."""

    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Credentials:
        return cls(env.get(ENV_USER) or None, env.get(ENV_PASSWORD) or None, env.get(ENV_TOKEN) or None)

    @property
    def described(self) -> str:
        """Which kind of credentials are set, for messages (never their values)."""
        if self.token:
            return f"the bearer token in {ENV_TOKEN}"
        if self.user:
            return f"the user in {ENV_USER} with the password in {ENV_PASSWORD}"
        return f"no credentials (set {ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN})"
