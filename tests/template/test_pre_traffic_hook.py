"""The pre-traffic hook's Python, run against fake Lambda and CodeDeploy clients.

The code is read from the folder the template's PreTrafficHookFunction names as its CodeUri
(its makefile build copies index.py as it is), so what is tested is what `sam build` ships.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import types

import pytest
from conftest import ROOT

PREFIX = "feature-flags-dev-"
HEALTH_VERSION_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:feature-flags-dev-health:7"
MIGRATE_FUNCTION = "feature-flags-dev-migrate"


def api_response(status: int, body) -> dict:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


HEALTHY = api_response(200, {"status": "ok", "cache": "redis", "redis": "up", "database": "up", "auth": "up"})
# What an admin handler answers a request without a token (it verifies tokens itself: there is
# no API Gateway authorizer), and what the $default function answers to anything.
MISSING_TOKEN = api_response(401, {"error": "Unauthorized", "message": "Missing Authorization header"})
NOT_FOUND = api_response(404, {"error": "Not found"})
UNKNOWN_PATH = "/canary-probe/no-such-route"


class FakeLambda:
    """`calls` records the probes; the migrate function's invocations go to `migrations`."""

    def __init__(self, answers: dict):
        self.answers = answers  # target -> response dict, or ("error", payload)
        self.answers.setdefault(MIGRATE_FUNCTION, {"schemaVersion": 3})
        self.calls: list[tuple[str, dict]] = []
        self.migrations: list[str] = []

    def invoke(self, FunctionName, Payload):
        event = json.loads(Payload)
        if FunctionName == MIGRATE_FUNCTION:
            self.migrations.append(FunctionName)
        else:
            self.calls.append((FunctionName, event))
        answer = self.answers[FunctionName]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if isinstance(answer, tuple):
            return {"FunctionError": "Unhandled", "Payload": io.BytesIO(json.dumps(answer[1]).encode())}
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(answer).encode())}


class FakeCodeDeploy:
    def __init__(self, function: str, version: str, inline: bool = True, fail: bool = False):
        spec = {
            "version": "0.0",
            "Resources": [
                {
                    "Fn": {
                        "Type": "AWS::Lambda::Function",
                        "Properties": {
                            "Name": function,
                            "Alias": "live",
                            "CurrentVersion": "6",
                            "TargetVersion": version,
                        },
                    }
                }
            ],
            "Hooks": [{"BeforeAllowTraffic": "CodeDeployHook_feature-flags-dev-pre-traffic"}],
        }
        self.content = json.dumps(spec)
        self.inline = inline
        self.fail = fail
        self.reports: list[dict] = []

    def get_deployment(self, deploymentId):
        if self.fail:
            raise RuntimeError("AccessDenied")
        revision = {"revisionType": "AppSpecContent"}
        if self.inline:
            revision["appSpecContent"] = {"content": self.content, "sha256": "x"}
        return {"deploymentInfo": {"applicationName": "app", "revision": revision}}

    def get_application_revision(self, applicationName, revision):
        return {"revision": {"revisionType": "String", "string": {"content": self.content}}}

    def put_lifecycle_event_hook_execution_status(self, **kwargs):
        self.reports.append(kwargs)


@pytest.fixture
def load_hook(resources, monkeypatch):
    code_uri = resources["PreTrafficHookFunction"]["Properties"]["CodeUri"]
    code = (ROOT / code_uri / "index.py").read_text()
    monkeypatch.setenv("FUNCTION_NAME_PREFIX", PREFIX)
    monkeypatch.setenv("HEALTH_FUNCTION_VERSION_ARN", HEALTH_VERSION_ARN)
    monkeypatch.setenv("HEALTH_ATTEMPTS", "2")
    monkeypatch.setenv("MIGRATE_FUNCTION_NAME", MIGRATE_FUNCTION)

    def load(lambda_client: FakeLambda, codedeploy: FakeCodeDeploy):
        clients = {"lambda": lambda_client, "codedeploy": codedeploy}
        fake_boto3 = types.SimpleNamespace(client=lambda name: clients[name])
        monkeypatch.setitem(sys.modules, "boto3", fake_boto3)
        module = types.ModuleType("pre_traffic_hook")
        exec(compile(code, "index.py", "exec"), module.__dict__)
        monkeypatch.setattr(module.time, "sleep", lambda _seconds: None)
        return module

    return load


def run(module, codedeploy) -> str:
    result = module.handler({"DeploymentId": "d-123", "LifecycleEventHookExecutionId": "e-456"}, None)
    assert codedeploy.reports == [
        {"deploymentId": "d-123", "lifecycleEventHookExecutionId": "e-456", "status": result["status"]}
    ]
    return result["status"]


def test_new_health_version_that_reaches_redis_and_the_database_passes(load_hook):
    lam = FakeLambda({f"{PREFIX}health:8": HEALTHY})
    cd = FakeCodeDeploy(f"{PREFIX}health", "8")
    assert run(load_hook(lam, cd), cd) == "Succeeded"
    ((target, event),) = lam.calls
    assert target == f"{PREFIX}health:8"
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /health"
    assert event["rawPath"] == "/health"
    assert event["requestContext"]["http"]["method"] == "GET"


@pytest.mark.parametrize(
    "answer",
    [
        api_response(503, {"status": "degraded", "cache": "none", "redis": "up", "database": "down", "auth": "up"}),
        api_response(200, {"status": "degraded", "cache": "memory", "redis": "down", "database": "up", "auth": "up"}),
        # The signing keys cannot be fetched (e.g. the JWKS unreachable through the VPC
        # endpoint): every admin request of the new version would fail.
        api_response(200, {"status": "degraded", "cache": "redis", "redis": "up", "database": "up", "auth": "down"}),
        # No verifier at all: the admin routes would refuse every token.
        api_response(200, {"status": "ok", "cache": "redis", "redis": "up", "database": "up", "auth": "disabled"}),
        # A version from before the auth field.
        api_response(200, {"status": "ok", "cache": "redis", "redis": "up", "database": "up"}),
        api_response(200, {"status": "ok"}),
        {"statusCode": 200, "body": "not json"},
        ("error", {"errorMessage": "panic"}),
    ],
    ids=["database-down", "redis-down", "auth-down", "auth-disabled", "auth-missing", "fields-missing",
         "body-not-json", "function-error"],
)
def test_unhealthy_new_health_version_fails_the_deployment(load_hook, answer):
    lam = FakeLambda({f"{PREFIX}health:8": answer})
    cd = FakeCodeDeploy(f"{PREFIX}health", "8")
    assert run(load_hook(lam, cd), cd) == "Failed"
    assert len(lam.calls) == 2  # retried once (HEALTH_ATTEMPTS=2), then failed


def test_redis_disabled_is_accepted_and_a_slow_first_start_is_retried(load_hook):
    disabled = api_response(
        200, {"status": "ok", "cache": "memory", "redis": "disabled", "database": "up", "auth": "up"}
    )
    lam = FakeLambda({f"{PREFIX}health:8": [("error", {"errorMessage": "init timeout"}), disabled]})
    cd = FakeCodeDeploy(f"{PREFIX}health", "8")
    assert run(load_hook(lam, cd), cd) == "Succeeded"


def test_other_function_checks_the_backends_then_smoke_tests_its_new_version(load_hook):
    target = f"{PREFIX}admin-delete-override:3"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: MISSING_TOKEN})
    cd = FakeCodeDeploy(f"{PREFIX}admin-delete-override", "3", inline=False)
    assert run(load_hook(lam, cd), cd) == "Succeeded"
    assert [c[0] for c in lam.calls] == [HEALTH_VERSION_ARN, target]
    event = lam.calls[1][1]
    assert event["routeKey"] == "DELETE /admin/flags/{flagKey}/users/{userId}"
    assert event["rawPath"] == "/admin/flags/canary-probe/users/canary-probe"
    assert event["pathParameters"] == {"flagKey": "canary-probe", "userId": "canary-probe"}
    assert "authorization" not in {k.lower() for k in event["headers"]}, "the probe must never be authorised"


@pytest.mark.parametrize(
    "answer", [api_response(500, {"error": "Internal server error"}), ("error", {"errorMessage": "boom"})]
)
def test_other_function_failing_its_smoke_test_fails_the_deployment(load_hook, answer):
    target = f"{PREFIX}get-flags:12"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: answer})
    cd = FakeCodeDeploy(f"{PREFIX}get-flags", "12")
    assert run(load_hook(lam, cd), cd) == "Failed"


def test_other_function_is_not_shifted_while_the_backends_are_down(load_hook):
    down = api_response(503, {"status": "degraded", "cache": "none", "redis": "down", "database": "down"})
    lam = FakeLambda({HEALTH_VERSION_ARN: down})
    cd = FakeCodeDeploy(f"{PREFIX}get-flag", "4")
    assert run(load_hook(lam, cd), cd) == "Failed"


def test_unknown_function_and_api_errors_fail_instead_of_hanging(load_hook):
    cd = FakeCodeDeploy("someone-else", "1")
    assert run(load_hook(FakeLambda({HEALTH_VERSION_ARN: HEALTHY}), cd), cd) == "Failed"
    cd = FakeCodeDeploy(f"{PREFIX}health", "1", fail=True)
    assert run(load_hook(FakeLambda({}), cd), cd) == "Failed"


def test_hook_knows_a_smoke_route_for_every_binary(load_hook, resources):
    module = load_hook(FakeLambda({}), FakeCodeDeploy(f"{PREFIX}health", "1"))
    rust = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::Serverless::Function" and "BuildProperties" in r.get("Metadata", {})
    ]
    binaries = {}
    for r in rust:
        events = [e for e in r["Properties"].get("Events", {}).values() if e["Type"] == "HttpApi"]
        binary = r["Metadata"]["BuildProperties"]["Binary"]
        if events:
            binaries[binary] = events[0]["Properties"]
        else:
            # A function without a route (the scheduled applier) never reaches the hook: it has
            # no DeploymentPreference, so CodeDeploy does not deploy it.
            assert "DeploymentPreference" not in r["Properties"], binary
            assert binary not in module.ROUTES, binary
    assert len(binaries) == 19  # the 18 routes of the contract and the $default route
    assert set(module.ROUTES) == set(binaries)
    # A probe body only where the route takes one (POST), on a public route.
    for binary in module.BODIES:
        method, route, _params = module.ROUTES[binary]
        assert method == "POST" and module.expected_answer(route) is None, binary
    for binary, (method, route, _params) in module.ROUTES.items():
        template_route = (binaries[binary]["Method"], binaries[binary]["Path"])
        if route == "$default":
            # Any method reaches $default; the probe sends a GET.
            assert (binary, template_route) == ("not-found", ("ANY", "$default"))
            assert module.expected_answer(route) == (404, {"error": "Not found"})
        else:
            assert (method, route) == template_route
            expected = module.expected_answer(route)
            if route.startswith("/admin/"):
                assert expected == (401, {"error": "Unauthorized", "message": "Missing Authorization header"})
            else:
                assert expected is None, binary  # public routes: no function error, no 5xx


def test_admin_audit_smoke_test_is_a_harmless_unauthenticated_get(load_hook):
    target = f"{PREFIX}admin-audit:2"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: MISSING_TOKEN})
    cd = FakeCodeDeploy(f"{PREFIX}admin-audit", "2")
    assert run(load_hook(lam, cd), cd) == "Succeeded"
    assert [c[0] for c in lam.calls] == [HEALTH_VERSION_ARN, target]
    event = lam.calls[1][1]
    assert (event["routeKey"], event["rawPath"]) == ("GET /admin/audit", "/admin/audit")
    assert "pathParameters" not in event
    assert "authorization" not in {k.lower() for k in event["headers"]}


@pytest.mark.parametrize(
    ("binary", "route_key", "raw_path", "params"),
    [
        (
            "admin-create-schedule",
            "POST /admin/flags/{flagKey}/schedule",
            "/admin/flags/canary-probe/schedule",
            {"flagKey": "canary-probe"},
        ),
        (
            "admin-list-schedules",
            "GET /admin/flags/{flagKey}/schedule",
            "/admin/flags/canary-probe/schedule",
            {"flagKey": "canary-probe"},
        ),
        (
            "admin-cancel-schedule",
            "DELETE /admin/flags/{flagKey}/schedule/{scheduleId}",
            "/admin/flags/canary-probe/schedule/00000000-0000-4000-8000-000000000000",
            {"flagKey": "canary-probe", "scheduleId": "00000000-0000-4000-8000-000000000000"},
        ),
    ],
)
def test_schedule_routes_smoke_test_is_an_unauthenticated_request(load_hook, binary, route_key, raw_path, params):
    target = f"{PREFIX}{binary}:5"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: MISSING_TOKEN})
    cd = FakeCodeDeploy(f"{PREFIX}{binary}", "5")
    assert run(load_hook(lam, cd), cd) == "Succeeded"
    assert [c[0] for c in lam.calls] == [HEALTH_VERSION_ARN, target]
    event = lam.calls[1][1]
    assert (event["routeKey"], event["rawPath"]) == (route_key, raw_path)
    assert event["requestContext"]["http"]["path"] == raw_path
    assert event["pathParameters"] == params
    assert "body" not in event
    assert "authorization" not in {k.lower() for k in event["headers"]}


def test_applier_deployment_is_unknown_to_the_hook(load_hook):
    # The applier has no DeploymentPreference; were CodeDeploy ever to send it, the hook fails
    # rather than invoking a scheduled function with an HTTP event.
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY})
    cd = FakeCodeDeploy(f"{PREFIX}apply-schedules", "2")
    assert run(load_hook(lam, cd), cd) == "Failed"
    assert all(target != f"{PREFIX}apply-schedules:2" for target, _ in lam.calls)


@pytest.mark.parametrize(
    "answer",
    [
        api_response(401, {"message": "Unauthorized"}),  # API Gateway's body, not the handler's
        api_response(401, {"error": "Unauthorized"}),
        api_response(401, {"error": "Unauthorized", "message": "Invalid or expired token"}),
        api_response(403, {"error": "Forbidden"}),
        api_response(200, {"flags": []}),  # the unauthenticated probe got through
        api_response(404, {"error": "Flag not found"}),
        {"statusCode": 401, "body": ""},
    ],
    ids=["gateway-body", "no-message", "other-message", "403", "200", "404", "empty-body"],
)
def test_admin_function_must_refuse_the_probe_with_the_missing_token_401(load_hook, answer):
    target = f"{PREFIX}admin-list-flags:9"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: answer})
    cd = FakeCodeDeploy(f"{PREFIX}admin-list-flags", "9")
    assert run(load_hook(lam, cd), cd) == "Failed"
    assert [c[0] for c in lam.calls] == [HEALTH_VERSION_ARN, target]


def test_admin_missing_token_answer_may_be_base64_encoded(load_hook):
    target = f"{PREFIX}admin-create-flag:4"
    body = json.dumps({"error": "Unauthorized", "message": "Missing Authorization header"})
    answer = {"statusCode": 401, "body": base64.b64encode(body.encode()).decode(), "isBase64Encoded": True}
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: answer})
    cd = FakeCodeDeploy(f"{PREFIX}admin-create-flag", "4")
    assert run(load_hook(lam, cd), cd) == "Succeeded"


def test_public_function_smoke_test_only_needs_no_5xx(load_hook):
    # GET /config/flags/canary-probe: the flag does not exist; any non-5xx answer is fine.
    target = f"{PREFIX}get-flag:3"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: api_response(404, {"error": "Flag not found"})})
    cd = FakeCodeDeploy(f"{PREFIX}get-flag", "3")
    assert run(load_hook(lam, cd), cd) == "Succeeded"


@pytest.mark.parametrize(
    ("binary", "route_key", "raw_path", "params", "answer"),
    [
        (
            "ofrep-evaluate-flag",
            "POST /ofrep/v1/evaluate/flags/{key}",
            "/ofrep/v1/evaluate/flags/canary-probe",
            {"key": "canary-probe"},
            api_response(404, {"key": "canary-probe", "errorCode": "FLAG_NOT_FOUND"}),
        ),
        (
            "ofrep-evaluate-flags",
            "POST /ofrep/v1/evaluate/flags",
            "/ofrep/v1/evaluate/flags",
            None,
            api_response(200, {"flags": []}),
        ),
    ],
    ids=["one-flag", "bulk"],
)
def test_ofrep_smoke_test_posts_an_empty_context_without_a_token(load_hook, binary, route_key, raw_path, params, answer):
    # Public routes (an optional bearer token, verified in the handler): any non-5xx answer is fine.
    target = f"{PREFIX}{binary}:6"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: answer})
    cd = FakeCodeDeploy(f"{PREFIX}{binary}", "6")
    assert run(load_hook(lam, cd), cd) == "Succeeded"
    assert [c[0] for c in lam.calls] == [HEALTH_VERSION_ARN, target]
    event = lam.calls[1][1]
    assert event["version"] == "2.0"
    assert (event["routeKey"], event["rawPath"]) == (route_key, raw_path)
    assert event["requestContext"]["routeKey"] == route_key
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["http"]["path"] == raw_path
    assert event.get("pathParameters") == params
    assert event["isBase64Encoded"] is False
    assert json.loads(event["body"]) == {"context": {}}
    assert event["headers"]["content-type"] == "application/json"
    assert event["headers"]["content-length"] == str(len(event["body"].encode()))
    assert "authorization" not in {k.lower() for k in event["headers"]}, "the probe must never be authorised"


@pytest.mark.parametrize("binary", ["ofrep-evaluate-flag", "ofrep-evaluate-flags"])
@pytest.mark.parametrize(
    "answer",
    [api_response(500, {"errorCode": "GENERAL", "errorDetails": "boom"}), ("error", {"errorMessage": "panic"})],
    ids=["500", "function-error"],
)
def test_ofrep_function_failing_its_smoke_test_fails_the_deployment(load_hook, binary, answer):
    target = f"{PREFIX}{binary}:6"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: answer})
    cd = FakeCodeDeploy(f"{PREFIX}{binary}", "6")
    assert run(load_hook(lam, cd), cd) == "Failed"


def test_not_found_function_answers_the_contract_404_to_an_unknown_path(load_hook):
    target = f"{PREFIX}not-found:2"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: NOT_FOUND})
    cd = FakeCodeDeploy(f"{PREFIX}not-found", "2")
    assert run(load_hook(lam, cd), cd) == "Succeeded"
    # Like every other function: the shared backends first, then the new version.
    assert [c[0] for c in lam.calls] == [HEALTH_VERSION_ARN, target]
    event = lam.calls[1][1]
    # What API Gateway sends for a request that matches no route.
    assert event["version"] == "2.0"
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "$default"
    assert event["rawPath"] == event["requestContext"]["http"]["path"] == UNKNOWN_PATH
    assert event["requestContext"]["http"]["method"] == "GET"
    assert "pathParameters" not in event
    assert "authorization" not in {k.lower() for k in event["headers"]}


@pytest.mark.parametrize(
    "answer",
    [
        api_response(404, {"message": "Not Found"}),  # API Gateway's own body
        api_response(404, {"error": "Flag not found"}),
        api_response(200, {"error": "Not found"}),
        api_response(500, {"error": "Internal server error"}),
        {"statusCode": 404, "body": "Not found"},
        ("error", {"errorMessage": "panic"}),
    ],
    ids=["gateway-body", "other-404", "200", "500", "body-not-json", "function-error"],
)
def test_not_found_function_with_another_answer_fails_the_deployment(load_hook, answer):
    target = f"{PREFIX}not-found:2"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: answer})
    cd = FakeCodeDeploy(f"{PREFIX}not-found", "2")
    assert run(load_hook(lam, cd), cd) == "Failed"


def test_the_migrations_run_once_before_any_check(load_hook):
    target = f"{PREFIX}get-flags:4"
    lam = FakeLambda({HEALTH_VERSION_ARN: HEALTHY, target: api_response(200, {})})
    cd = FakeCodeDeploy(f"{PREFIX}get-flags", "4")
    assert run(load_hook(lam, cd), cd) == "Succeeded"
    assert lam.migrations == [MIGRATE_FUNCTION]


def test_failed_migrations_fail_the_deployment_before_any_probe(load_hook):
    lam = FakeLambda({MIGRATE_FUNCTION: ("error", {"errorType": "Migration", "errorMessage": "no"})})
    cd = FakeCodeDeploy(f"{PREFIX}health", "8")
    assert run(load_hook(lam, cd), cd) == "Failed"
    assert lam.migrations == [MIGRATE_FUNCTION]
    assert lam.calls == []
