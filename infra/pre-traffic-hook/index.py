"""CodeDeploy BeforeAllowTraffic hook of the feature-flag functions.

Before any traffic moves to a new version it applies the pending database migrations (the
migrate function, with the code of this same stack update: an applied migration is skipped,
and concurrent runs wait on the migrator's lock in PostgreSQL), then checks:
1. the health function - the new version when the health function itself is being
   deployed, otherwise the health version published by this same stack update -
   answers GET /health with 200, "database":"up", "redis":"up" or "disabled", and
   "auth":"up": it holds the user pool's signing keys, so admin tokens can be verified
   (the JWKS is fetched through the cognito-idp endpoint at init);
2. when another function is being deployed, that function's new version starts with
   the new code and configuration and answers a harmless request to its own route
   without a function error or a 5xx (the OFREP routes get an empty evaluation
   context as their JSON body). The request carries no token: there is no API
   Gateway authorizer, the admin handlers verify tokens themselves, so they must
   answer exactly 401 {"error":"Unauthorized","message":"Missing Authorization header"}
   (anything else would mean an admin route answers unauthenticated callers). The
   $default function gets a path that no route matches and must answer exactly
   404 {"error":"Not found"}.
It then reports Succeeded or Failed to CodeDeploy; Failed rolls the deployment back.
"""
import base64
import json
import os
import time
import uuid

import boto3

CODEDEPLOY = boto3.client("codedeploy")
LAMBDA = boto3.client("lambda")

PREFIX = os.environ["FUNCTION_NAME_PREFIX"]
HEALTH_FUNCTION = PREFIX + "health"
HEALTH_VERSION_ARN = os.environ["HEALTH_FUNCTION_VERSION_ARN"]
MIGRATE_FUNCTION = os.environ["MIGRATE_FUNCTION_NAME"]
ATTEMPTS = int(os.environ.get("HEALTH_ATTEMPTS", "3"))
PROBE = "canary-probe"
# A well-formed id that no schedule has (the probe is never authorised anyway).
PROBE_ID = "00000000-0000-4000-8000-000000000000"
# The HTTP API's catch-all route, and a path that no other route matches for it.
DEFAULT_ROUTE = "$default"
UNKNOWN_PATH = "/canary-probe/no-such-route"

# binary name -> (method, route path, path parameters)
ROUTES = {
    "get-flags": ("GET", "/config/flags", {}),
    "get-flag": ("GET", "/config/flags/{flagKey}", {"flagKey": PROBE}),
    "health": ("GET", "/health", {}),
    "admin-list-flags": ("GET", "/admin/flags", {}),
    "admin-create-flag": ("POST", "/admin/flags", {}),
    "admin-update-flag": ("POST", "/admin/flags/{flagKey}", {"flagKey": PROBE}),
    "admin-delete-flag": ("DELETE", "/admin/flags/{flagKey}", {"flagKey": PROBE}),
    "admin-upsert-override": ("POST", "/admin/flags/{flagKey}/users", {"flagKey": PROBE}),
    "admin-delete-override": (
        "DELETE",
        "/admin/flags/{flagKey}/users/{userId}",
        {"flagKey": PROBE, "userId": PROBE},
    ),
    "admin-list-overrides": ("GET", "/admin/flags/{flagKey}/users", {"flagKey": PROBE}),
    "admin-invalidate-cache": ("POST", "/admin/cache/invalidate", {}),
    "admin-audit": ("GET", "/admin/audit", {}),
    "admin-create-schedule": ("POST", "/admin/flags/{flagKey}/schedule", {"flagKey": PROBE}),
    "admin-list-schedules": ("GET", "/admin/flags/{flagKey}/schedule", {"flagKey": PROBE}),
    "admin-cancel-schedule": (
        "DELETE",
        "/admin/flags/{flagKey}/schedule/{scheduleId}",
        {"flagKey": PROBE, "scheduleId": PROBE_ID},
    ),
    "ofrep-evaluate-flag": ("POST", "/ofrep/v1/evaluate/flags/{key}", {"key": PROBE}),
    "ofrep-evaluate-flags": ("POST", "/ofrep/v1/evaluate/flags", {}),
    "openapi": ("GET", "/openapi.json", {}),
    "not-found": ("GET", DEFAULT_ROUTE, {}),
}
# binary name -> JSON body of its probe (the others send none). The OFREP routes read
# an evaluation context; an empty one evaluates without a targeting key.
BODIES = {
    "ofrep-evaluate-flag": {"context": {}},
    "ofrep-evaluate-flags": {"context": {}},
}

# The exact (status, body) a probe without a token must get back; other routes only
# need no function error and no 5xx.
MISSING_TOKEN = (401, {"error": "Unauthorized", "message": "Missing Authorization header"})
NOT_FOUND = (404, {"error": "Not found"})


def expected_answer(route):
    if route == DEFAULT_ROUTE:
        return NOT_FOUND
    if route.startswith("/admin/"):
        return MISSING_TOKEN
    return None


class CheckFailed(Exception):
    pass


def log(level, message, **fields):
    print(json.dumps({"level": level, "message": message, **fields}))


def http_event(method, route, params, body=None):
    """An API Gateway HTTP API (payload 2.0) event, as the real route would send it."""
    if route == DEFAULT_ROUTE:
        route_key, path = DEFAULT_ROUTE, UNKNOWN_PATH
    else:
        route_key, path = f"{method} {route}", route
        for name, value in params.items():
            path = path.replace("{" + name + "}", value)
    now = time.time()
    event = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "accept": "application/json",
            "host": "pre-traffic.invalid",
            "user-agent": "codedeploy-pre-traffic-hook",
            "x-forwarded-proto": "https",
        },
        "requestContext": {
            "accountId": "pre-traffic",
            "apiId": "pre-traffic",
            "domainName": "pre-traffic.invalid",
            "domainPrefix": "pre-traffic",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "codedeploy-pre-traffic-hook",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if params:
        event["pathParameters"] = dict(params)
    if body is not None:
        text = json.dumps(body)
        event["headers"]["content-type"] = "application/json"
        event["headers"]["content-length"] = str(len(text.encode()))
        event["body"] = text
    return event


def invoke(target, event):
    response = LAMBDA.invoke(FunctionName=target, Payload=json.dumps(event).encode())
    raw = response["Payload"].read()
    if response.get("FunctionError"):
        raise CheckFailed(f"{target}: function error {response['FunctionError']}: {raw[:300]!r}")
    try:
        result = json.loads(raw)
    except ValueError as exc:
        raise CheckFailed(f"{target}: the response is not JSON") from exc
    if not isinstance(result, dict) or not isinstance(result.get("statusCode"), int):
        raise CheckFailed(f"{target}: the response has no statusCode")
    return result


def apply_migrations():
    response = LAMBDA.invoke(FunctionName=MIGRATE_FUNCTION, Payload=b"{}")
    raw = response["Payload"].read()
    if response.get("FunctionError"):
        raise CheckFailed(f"{MIGRATE_FUNCTION}: the migrations failed: {raw[:300]!r}")
    log("INFO", "migrations applied", result=json.loads(raw))


def body_of(result):
    body = result.get("body") or ""
    if result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    return json.loads(body)


def check_health(target):
    problem = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            result = invoke(target, http_event("GET", "/health", {}))
            status = result["statusCode"]
            try:
                doc = body_of(result)
            except ValueError:
                doc = None
            if (
                status == 200
                and isinstance(doc, dict)
                and doc.get("database") == "up"
                and doc.get("redis") in ("up", "disabled")
                and doc.get("auth") == "up"
            ):
                log("INFO", "health check passed", target=target, health=doc)
                return doc
            problem = f"{target}: GET /health answered {status} {doc}"
        except CheckFailed as exc:
            problem = str(exc)
        log("WARN", "health check attempt failed", target=target, attempt=attempt, problem=problem)
        if attempt < ATTEMPTS:
            time.sleep(3)
    raise CheckFailed(problem)


def smoke_test(function_name, target):
    binary = function_name[len(PREFIX):] if function_name.startswith(PREFIX) else ""
    if binary not in ROUTES:
        raise CheckFailed(f"{function_name}: no smoke-test route is known for this function")
    method, route, params = ROUTES[binary]
    event = http_event(method, route, params, BODIES.get(binary))
    request = f"{method} {event['rawPath']}"
    result = invoke(target, event)
    status = result["statusCode"]
    if status >= 500:
        raise CheckFailed(f"{target}: {request} answered {status}")
    expected = expected_answer(route)
    if expected is not None:
        try:
            body = body_of(result)
        except ValueError:
            body = None
        if (status, body) != expected:
            raise CheckFailed(
                f"{target}: {request} without a token answered {status} {body!r}, "
                f"expected {expected[0]} {json.dumps(expected[1])}"
            )
    log("INFO", "smoke test passed", target=target, route=event["routeKey"], status=status)


def deployment_targets(deployment_id):
    """(function name, target version) of every function in the deployment's AppSpec."""
    info = CODEDEPLOY.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
    revision = info["revision"]
    content = (revision.get("appSpecContent") or revision.get("string") or {}).get("content")
    if not content:
        revision = CODEDEPLOY.get_application_revision(
            applicationName=info["applicationName"], revision=revision
        )["revision"]
        content = (revision.get("appSpecContent") or revision.get("string") or {}).get("content")
    spec = json.loads(content or "{}")
    targets = []
    for resource in spec.get("Resources", []):
        for item in resource.values():
            properties = item.get("Properties", {})
            targets.append((properties["Name"], str(properties["TargetVersion"])))
    if not targets:
        raise CheckFailed(f"deployment {deployment_id}: no Lambda target in its AppSpec")
    return targets


def handler(event, _context):
    deployment_id = event["DeploymentId"]
    status = "Failed"
    try:
        apply_migrations()
        for function_name, version in deployment_targets(deployment_id):
            target = f"{function_name}:{version}"
            if function_name == HEALTH_FUNCTION:
                check_health(target)
            else:
                check_health(HEALTH_VERSION_ARN)
                smoke_test(function_name, target)
        status = "Succeeded"
    except Exception as exc:  # any failure, including an unexpected one, fails the deployment
        log("ERROR", "pre-traffic check failed", deployment=deployment_id, error=str(exc))
    finally:
        CODEDEPLOY.put_lifecycle_event_hook_execution_status(
            deploymentId=deployment_id,
            lifecycleEventHookExecutionId=event["LifecycleEventHookExecutionId"],
            status=status,
        )
    log("INFO", "pre-traffic hook reported", deployment=deployment_id, status=status)
    return {"status": status}
