"""The Python OpenFeature SDK with its OFREP provider against the running service.

The provider set-up below is the one docs/openfeature.md shows: the base URL of the service, the
environment in the X-Environment header, the user's id as the context's targeting key.
"""

import pytest
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

ROLLOUT = 50


def make_client(flags_url: str, environment: str, token: str | None = None):
    """An OpenFeature client bound to one environment (and, optionally, a user's token)."""

    def headers() -> dict[str, str]:
        values = {"X-Environment": environment}
        if token:
            values["Authorization"] = f"Bearer {token}"
        return values

    domain = f"{environment}/{token[-8:] if token else 'anonymous'}"
    api.set_provider(OFREPProvider(flags_url, headers_factory=headers), domain=domain)
    return api.get_client(domain)


@pytest.fixture(scope="session", autouse=True)
def shutdown_openfeature():
    yield
    api.shutdown()


@pytest.fixture(scope="session")
def environment(run_id) -> str:
    """A non-default environment of this run's own (environments are created by their flags)."""
    return f"of-py-{run_id}"


@pytest.fixture(scope="session")
def keys(run_id) -> dict[str, str]:
    return {
        name: f"of-py-{name}-{run_id}"
        for name in ("partial", "include", "exclude", "disabled", "full", "zero", "prod")
    }


@pytest.fixture(scope="session")
def inside_outside(admin, environment, keys, service_evaluation, user_tokens):
    """Creates this run's flags and returns (users inside, users outside) the partial rollout,
    as the service's own GET /config/flags evaluates them for each user's token."""
    admin.create_flag(environment, keys["partial"], enabled=True, rollout=ROLLOUT)
    users = list(user_tokens)
    answers = {user: service_evaluation(environment, user)[keys["partial"]] for user in users}
    inside = [user for user in users if answers[user]]
    outside = [user for user in users if not answers[user]]
    assert inside and outside, f"at {ROLLOUT} % the test users must fall on both sides: {answers}"
    return inside, outside


@pytest.fixture(scope="session")
def flags(admin, environment, keys, inside_outside):
    inside, outside = inside_outside
    admin.create_flag(environment, keys["include"], enabled=True, rollout=ROLLOUT)
    admin.override(environment, keys["include"], outside[0], "include")
    admin.create_flag(environment, keys["exclude"], enabled=True, rollout=ROLLOUT)
    admin.override(environment, keys["exclude"], inside[0], "exclude")
    admin.create_flag(environment, keys["disabled"], enabled=False, rollout=100)
    admin.override(environment, keys["disabled"], inside[0], "include")
    admin.create_flag(environment, keys["full"], enabled=True, rollout=100)
    admin.create_flag(environment, keys["zero"], enabled=True, rollout=0)
    # The same key in production (on for everyone) and in this run's environment (off).
    admin.create_flag("production", keys["prod"], enabled=True, rollout=100)
    admin.create_flag(environment, keys["prod"], enabled=False, rollout=100)
    return keys


@pytest.fixture(scope="session")
def client(flags_url, environment, flags):
    return make_client(flags_url, environment)


def context(user_id: str) -> EvaluationContext:
    return EvaluationContext(targeting_key=user_id)


def assert_details(details, value: bool, variant: str, reason: Reason) -> None:
    assert (details.value, details.variant, details.reason, details.error_code) == (
        value,
        variant,
        reason,
        None,
    ), details


def test_user_inside_a_partial_rollout_is_on_by_split(client, flags, inside_outside):
    inside, _ = inside_outside
    for user in inside:
        details = client.get_boolean_details(flags["partial"], False, context(user))
        assert_details(details, True, "on", Reason.SPLIT)
        assert details.flag_metadata["rolloutPercentage"] == ROLLOUT


def test_user_outside_a_partial_rollout_is_off_by_split(client, flags, inside_outside):
    _, outside = inside_outside
    for user in outside:
        details = client.get_boolean_details(flags["partial"], True, context(user))
        assert_details(details, False, "off", Reason.SPLIT)


def test_include_override_turns_it_on_for_a_user_outside(client, flags, inside_outside):
    _, outside = inside_outside
    details = client.get_boolean_details(flags["include"], False, context(outside[0]))
    assert_details(details, True, "on", Reason.TARGETING_MATCH)
    # Another user outside, without an override, still splits off.
    for user in outside[1:]:
        other = client.get_boolean_details(flags["include"], False, context(user))
        assert_details(other, False, "off", Reason.SPLIT)


def test_exclude_override_turns_it_off_for_a_user_inside(client, flags, inside_outside):
    inside, _ = inside_outside
    details = client.get_boolean_details(flags["exclude"], True, context(inside[0]))
    assert_details(details, False, "off", Reason.TARGETING_MATCH)


def test_disabled_flag_is_off_even_for_an_included_user(client, flags, inside_outside):
    inside, outside = inside_outside
    for user in (inside[0], outside[0]):
        details = client.get_boolean_details(flags["disabled"], True, context(user))
        assert_details(details, False, "off", Reason.DISABLED)


def test_full_and_zero_rollouts_are_static(client, flags, inside_outside):
    inside, outside = inside_outside
    for user in (inside[0], outside[0]):
        full = client.get_boolean_details(flags["full"], False, context(user))
        assert_details(full, True, "on", Reason.STATIC)
        zero = client.get_boolean_details(flags["zero"], True, context(user))
        assert_details(zero, False, "off", Reason.STATIC)
    anonymous = client.get_boolean_details(flags["full"], False)
    assert_details(anonymous, True, "on", Reason.STATIC)


def test_anonymous_caller_at_a_partial_rollout_gets_the_default(client, flags):
    details = client.get_boolean_details(flags["partial"], True)
    assert_details(details, False, "off", Reason.DEFAULT)


def test_missing_flag_returns_the_callers_default(client, run_id):
    for default in (True, False):
        details = client.get_boolean_details(f"of-py-missing-{run_id}", default, context("anyone"))
        assert details.value is default
        assert details.error_code == ErrorCode.FLAG_NOT_FOUND
        assert details.reason == Reason.ERROR


def test_the_environment_header_selects_the_environment(flags_url, client, flags):
    in_run_environment = client.get_boolean_details(flags["prod"], True, context("anyone"))
    assert_details(in_run_environment, False, "off", Reason.DISABLED)
    production = make_client(flags_url, "production")
    in_production = production.get_boolean_details(flags["prod"], False, context("anyone"))
    assert_details(in_production, True, "on", Reason.STATIC)
    assert in_production.flag_metadata["environment"] == "production"


def test_bearer_token_sub_is_the_targeting_key_without_one_in_the_context(
    flags_url, environment, flags, user_tokens, service_evaluation
):
    for user, token in user_tokens.items():
        expected = service_evaluation(environment, user)[flags["partial"]]
        with_token = make_client(flags_url, environment, token)
        details = with_token.get_boolean_details(flags["partial"], not expected)
        assert_details(details, expected, "on" if expected else "off", Reason.SPLIT)
