"""Fixtures for the OpenFeature client tests: the running server (scripts/test-clients.sh starts
one and exports FLAGS_URL, FLAGS_ADMIN_TOKEN and FLAGS_USER_TOKENS), an admin API client that
creates this run's flags, and the service's own evaluation for a user (the oracle).

Nothing here skips: a missing variable or an unreachable server is an error.
"""

import json
import os
import secrets

import pytest
import requests


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run the tests with scripts/test-clients.sh")
    return value


class Admin:
    """The service's admin API (bearer token of a user in the `admin` group)."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.created: list[tuple[str, str]] = []

    def create_flag(self, environment: str, key: str, *, enabled: bool, rollout: int) -> None:
        response = self.session.post(
            f"{self.base_url}/admin/flags",
            params={"environment": environment},
            json={
                "flagKey": key,
                "enabled": enabled,
                "rolloutPercentage": rollout,
                "description": "tests/openfeature",
            },
            timeout=10,
        )
        assert response.status_code == 201, response.text
        self.created.append((environment, key))

    def update_flag(self, environment: str, key: str, **fields) -> None:
        response = self.session.post(
            f"{self.base_url}/admin/flags/{key}",
            params={"environment": environment},
            json=fields,
            timeout=10,
        )
        assert response.status_code == 200, response.text

    def override(self, environment: str, key: str, user_id: str, kind: str) -> None:
        response = self.session.post(
            f"{self.base_url}/admin/flags/{key}/users",
            params={"environment": environment},
            json={"userId": user_id, "overrideType": kind, "reason": "tests/openfeature"},
            timeout=10,
        )
        assert response.status_code in (200, 201), response.text

    def delete_created(self) -> None:
        for environment, key in reversed(self.created):
            response = self.session.delete(
                f"{self.base_url}/admin/flags/{key}",
                params={"environment": environment},
                timeout=10,
            )
            assert response.status_code in (204, 404), response.text
        self.created.clear()


@pytest.fixture(scope="session")
def flags_url() -> str:
    url = _required("FLAGS_URL").rstrip("/")
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    return url


@pytest.fixture(scope="session")
def admin(flags_url):
    client = Admin(flags_url, _required("FLAGS_ADMIN_TOKEN"))
    yield client
    client.delete_created()


@pytest.fixture(scope="session")
def user_tokens() -> dict[str, str]:
    """{user id: access token}: the tokens' `sub` is the user id."""
    tokens = json.loads(_required("FLAGS_USER_TOKENS"))
    assert len(tokens) >= 2, tokens
    return tokens


@pytest.fixture(scope="session")
def run_id() -> str:
    """A suffix that makes this run's flag keys and environment its own."""
    return secrets.token_hex(3)


@pytest.fixture(scope="session")
def service_evaluation(flags_url, user_tokens):
    """What the service itself answers a user: GET /config/flags with the user's token."""

    def evaluate(environment: str, user_id: str) -> dict[str, bool]:
        response = requests.get(
            f"{flags_url}/config/flags",
            params={"environment": environment},
            headers={"Authorization": f"Bearer {user_tokens[user_id]}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()

    return evaluate
