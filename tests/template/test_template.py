"""Assertions on template.yaml (issue #4, acceptance criteria 9, 12 and 13).

`make test-template` runs them; `make validate` runs them after sam validate --lint,
cfn-lint and checkov.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER
from conftest import translate

ROOT = Path(__file__).resolve().parents[2]

# Contract section 2: (method, path) -> (binary, admin route?)
ROUTES = {
    ("GET", "/config/flags"): ("get-flags", False),
    ("GET", "/config/flags/{flagKey}"): ("get-flag", False),
    ("GET", "/health"): ("health", False),
    ("GET", "/admin/flags"): ("admin-list-flags", True),
    ("POST", "/admin/flags"): ("admin-create-flag", True),
    ("POST", "/admin/flags/{flagKey}"): ("admin-update-flag", True),
    ("DELETE", "/admin/flags/{flagKey}"): ("admin-delete-flag", True),
    ("POST", "/admin/flags/{flagKey}/users"): ("admin-upsert-override", True),
    ("DELETE", "/admin/flags/{flagKey}/users/{userId}"): ("admin-delete-override", True),
    ("GET", "/admin/flags/{flagKey}/users"): ("admin-list-overrides", True),
    ("POST", "/admin/cache/invalidate"): ("admin-invalidate-cache", True),
    ("GET", "/admin/audit"): ("admin-audit", True),
    ("POST", "/admin/flags/{flagKey}/schedule"): ("admin-create-schedule", True),
    ("GET", "/admin/flags/{flagKey}/schedule"): ("admin-list-schedules", True),
    ("DELETE", "/admin/flags/{flagKey}/schedule/{scheduleId}"): ("admin-cancel-schedule", True),
    # OpenFeature Remote Evaluation Protocol (contract 2.8): public, optional bearer token.
    ("POST", "/ofrep/v1/evaluate/flags/{key}"): ("ofrep-evaluate-flag", False),
    ("POST", "/ofrep/v1/evaluate/flags"): ("ofrep-evaluate-flags", False),
    # The OpenAPI document of every route (contract 2.9): public, built into the binary.
    ("GET", "/openapi.json"): ("openapi", False),
}
# The one Rust function that no route serves: EventBridge runs it every minute. It applies the
# due flag schedules (contract 2.6), then sweeps the pending cache invalidations (contract 3.1).
APPLIER = "ApplySchedulesFunction"
# The Rust function that applies the database migrations from inside the VPC: invoked by the
# pre-traffic hook before it checks a new version, and by `make deploy` after a stack update.
MIGRATE = "MigrateFunction"
MIGRATION_PARAMETER = {
    "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/feature-flags/${Environment}/migration-database-url"
}
# The HTTP API's $default route (any request that matches no route above): not a route of the
# contract (nor of the Rust route table), a function that answers 404 {"error":"Not found"} and
# does no I/O. Where it departs from the route functions' pattern, the test says why.
NOT_FOUND = "NotFoundFunction"
NOT_FOUND_BINARY = "not-found"
# SAM's spelling of the $default route on an HttpApi event, and what it becomes in the API's body.
DEFAULT_ROUTE_EVENT = ("ANY", "$default")
DEFAULT_ROUTE_OPERATION = ("X-AMAZON-APIGATEWAY-ANY-METHOD", "/$default")
# The functions that do no I/O (no SSM, no database, no Redis, no token): the $default function
# and GET /openapi.json, whose document is built into its binary. Their rows of the route table
# carry the same two exceptions (RuntimePolicy: 0, CacheOutcomes: [];
# test_the_io_free_functions_are_the_rows_with_the_two_exceptions), and where a test departs
# from the route functions' pattern for them, it says why. Named here rather than read from the
# table, so that an exception added to another row fails instead of excusing itself.
IO_FREE = {NOT_FOUND, "OpenApiFunction"}
IO_FREE_EXCEPTIONS = {"RuntimePolicy": 0, "CacheOutcomes": []}
COST_TAGS = {"Service": "ElastiCache", "Feature": "FeatureFlags", "Environment": {"Ref": "Environment"}}
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}
HOOK = "PreTrafficHookFunction"


# --- helpers -----------------------------------------------------------------------------


def of_type(resources: dict, type_: str) -> dict:
    return {name: r for name, r in resources.items() if r["Type"] == type_}


def route_functions(resources: dict) -> dict:
    """Every serverless function that serves an HttpApi route."""
    return {
        name: r
        for name, r in of_type(resources, "AWS::Serverless::Function").items()
        if any(e["Type"] == "HttpApi" for e in r["Properties"].get("Events", {}).values())
    }


def contract_route_functions(resources: dict) -> dict:
    """The route functions of the contract's routes: all of them but the $default function."""
    return {name: r for name, r in route_functions(resources).items() if name != NOT_FOUND}


def event_of(function: dict) -> dict:
    """The properties of a route function's only event."""
    (event,) = function["Properties"]["Events"].values()
    return event["Properties"]


def rust_functions(resources: dict) -> dict:
    """The Rust functions: the route functions and the scheduled applier (not the Python hook)."""
    return {
        name: r
        for name, r in of_type(resources, "AWS::Serverless::Function").items()
        if r.get("Metadata", {}).get("BuildMethod") == "rust-cargolambda"
    }


def sg_rules(resources: dict, group: str, direction: str) -> list[dict]:
    """Inline rules of a security group plus the standalone rule resources attached to it."""
    inline_key = "SecurityGroupIngress" if direction == "ingress" else "SecurityGroupEgress"
    standalone = "AWS::EC2::SecurityGroupIngress" if direction == "ingress" else "AWS::EC2::SecurityGroupEgress"
    rules = list(resources[group]["Properties"].get(inline_key, []))
    for resource in of_type(resources, standalone).values():
        if resource["Properties"]["GroupId"] == {"Ref": group}:
            rules.append(resource["Properties"])
    return rules


def all_sg_rules(resources: dict, direction: str) -> list[dict]:
    rules = []
    inline_key = "SecurityGroupIngress" if direction == "ingress" else "SecurityGroupEgress"
    standalone = "AWS::EC2::SecurityGroupIngress" if direction == "ingress" else "AWS::EC2::SecurityGroupEgress"
    for group in of_type(resources, "AWS::EC2::SecurityGroup").values():
        rules.extend(group["Properties"].get(inline_key, []))
    rules.extend(r["Properties"] for r in of_type(resources, standalone).values())
    return rules


def tags_of(properties: dict, key: str = "Tags") -> dict:
    tags = properties.get(key, {})
    if isinstance(tags, list):
        return {t["Key"]: t["Value"] for t in tags}
    return dict(tags)


def is_open(rule: dict) -> bool:
    return any(isinstance(rule.get(k), str) and rule[k] in OPEN_CIDRS for k in ("CidrIp", "CidrIpv6"))


def param_default(template: dict, ref: dict):
    assert set(ref) == {"Ref"}, ref
    return template["Parameters"][ref["Ref"]]["Default"]


NO_VALUE = {"Ref": "AWS::NoValue"}


def evaluate(template: dict, node, parameters: dict):
    """A condition (or rule assertion) of the template, evaluated as CloudFormation would for
    these parameter values, the defaults for the others (a CommaDelimitedList as a list)."""

    def value(node):
        if isinstance(node, list):
            return [value(item) for item in node]
        if not isinstance(node, dict):
            return node
        ((function, argument),) = node.items()
        if function == "Ref":
            if argument in parameters:
                return parameters[argument]
            parameter = template["Parameters"][argument]
            if parameter["Type"] == "CommaDelimitedList":
                return [item.strip() for item in parameter["Default"].split(",")]
            return parameter["Default"]
        if function == "Condition":
            return value(template["Conditions"][argument])
        if function == "Fn::Not":
            (operand,) = argument
            return not value(operand)
        if function == "Fn::And":
            return all(value(operand) for operand in argument)
        if function == "Fn::Or":
            return any(value(operand) for operand in argument)
        if function == "Fn::Equals":
            left, right = argument
            return value(left) == value(right)
        if function == "Fn::Join":
            separator, items = argument
            return separator.join(value(items))
        if function == "Fn::Contains":
            items, item = argument
            return value(item) in value(items)
        raise AssertionError(f"{function} is not evaluated here")

    return value(node)


def deployed(node, template: dict, parameters: dict):
    """`node` with its Fn::If resolved for these parameter values and AWS::NoValue removed."""
    if isinstance(node, list):
        items = (deployed(item, template, parameters) for item in node)
        return [item for item in items if item != NO_VALUE]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Fn::If"}:
        condition, if_true, if_false = node["Fn::If"]
        holds = evaluate(template, template["Conditions"][condition], parameters)
        return deployed(if_true if holds else if_false, template, parameters)
    values = {key: deployed(value, template, parameters) for key, value in node.items()}
    return {key: value for key, value in values.items() if value != NO_VALUE}


def rust_routes() -> dict:
    """crates/flags-api/src/routes.rs, read with regexes: variant -> (binary, method, path).

    `Route::ALL` lists the routes, `spec()` gives the method and path, `function_name()` the
    binary (and SAM `Binary`) name.
    """
    source = (ROOT / "crates" / "flags-api" / "src" / "routes.rs").read_text()

    def body(start_marker: str, end_marker: str) -> str:
        start = source.index(start_marker)
        return source[start : source.index(end_marker, start)]

    variants = re.findall(r"Route::(\w+)", body("pub const ALL", "];"))
    specs = {
        variant: (method, path)
        for variant, method, path in re.findall(
            r'Self::(\w+)\s*=>\s*\(\s*Method::(\w+),\s*"([^"]+)"', body("pub fn spec(self)", "\n    }\n")
        )
    }
    binaries = dict(re.findall(r'Self::(\w+)\s*=>\s*"([^"]+)"', body("pub fn function_name(self)", "\n    }\n")))
    assert variants and set(specs) == set(variants) == set(binaries), "routes.rs no longer reads as expected"
    return {variant: (binaries[variant], *specs[variant]) for variant in variants}


# --- network: AC 9 --------------------------------------------------------------------------


def test_redis_security_group_accepts_6379_from_the_functions_group_only(resources):
    rules = sg_rules(resources, "RedisSecurityGroup", "ingress")
    assert rules, "Redis must accept the functions"
    for rule in rules:
        assert rule["IpProtocol"] == "tcp"
        assert (rule["FromPort"], rule["ToPort"]) == (6379, 6379)
        assert rule["SourceSecurityGroupId"] == {"Ref": "FunctionSecurityGroup"}
        assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(rule), rule


def test_only_the_functions_group_may_reach_redis(resources):
    for rule in all_sg_rules(resources, "egress"):
        if rule.get("DestinationSecurityGroupId") == {"Ref": "RedisSecurityGroup"}:
            assert rule in sg_rules(resources, "FunctionSecurityGroup", "egress")
    redis = resources["RedisReplicationGroup"]["Properties"]
    assert redis["SecurityGroupIds"] == [{"Ref": "RedisSecurityGroup"}]
    assert redis["Port"] == 6379


def test_no_security_group_accepts_traffic_from_anywhere(resources):
    for rule in all_sg_rules(resources, "ingress"):
        assert not is_open(rule), rule


def test_no_security_group_keeps_the_default_allow_all_egress(resources):
    for name, group in of_type(resources, "AWS::EC2::SecurityGroup").items():
        assert group["Properties"].get("SecurityGroupEgress"), f"{name} would get EC2's allow-all egress"
    for rule in all_sg_rules(resources, "egress"):
        assert not is_open(rule), rule


def test_functions_egress_is_redis_postgres_and_https_to_endpoints_only(resources):
    rules = sg_rules(resources, "FunctionSecurityGroup", "egress")
    by_port = {}
    for rule in rules:
        assert rule["IpProtocol"] == "tcp" and rule["FromPort"] == rule["ToPort"], rule
        by_port.setdefault(rule["FromPort"], []).append(rule)
    assert set(by_port) == {443, 5432, 6379}
    assert [r["DestinationSecurityGroupId"] for r in by_port[6379]] == [{"Ref": "RedisSecurityGroup"}]
    for rule in by_port[443] + by_port[5432]:
        target = rule.get("DestinationSecurityGroupId") or rule.get("CidrIp")
        assert target in (
            {"Ref": "EndpointSecurityGroup"},
            {"Ref": "DatabaseSecurityGroupId"},
            VPC_CIDR,
        ), rule


# The CIDR that every VpcCidr use resolves to: the parameter, or, left empty (only possible
# without VpcId, see the rule below), the created VPC's 10.40.0.0/16 of before the rule.
VPC_CIDR = {"Fn::If": ["VpcCidrLeftEmpty", "10.40.0.0/16", {"Ref": "VpcCidr"}]}
GIVEN_VPC = {"Fn::Not": [{"Fn::Equals": [{"Ref": "VpcId"}, ""]}]}


def test_vpc_cidr_is_required_with_an_existing_vpc(template):
    # CloudFormation cannot tell a parameter left at its default from one set to the same
    # value, so VpcCidr defaults to empty and a rule refuses it empty when VpcId is given:
    # the change set fails instead of opening 5432 (and 443) to 10.40.0.0/16 in someone's VPC.
    param = template["Parameters"]["VpcCidr"]
    assert param["Default"] == ""
    assert re.fullmatch(param["AllowedPattern"], "")
    assert re.fullmatch(param["AllowedPattern"], "172.31.0.0/16")
    assert not re.fullmatch(param["AllowedPattern"], "172.31.0.0")
    assert template["Conditions"]["VpcCidrLeftEmpty"] == {"Fn::Equals": [{"Ref": "VpcCidr"}, ""]}
    rule = template["Rules"]["ExistingVpcNeedsItsCidr"]
    assert rule["RuleCondition"] == GIVEN_VPC
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "VpcCidr"}, ""]}]}
    description = assertion["AssertDescription"]
    assert "With VpcId, give VpcCidr" in description and "10.40.0.0/16" in description


def test_vpc_cidr_is_used_only_through_its_condition(template, resources):
    # Every use goes through VPC_CIDR, and the created VPC keeps 10.40.0.0/16 when left empty.
    uses = {}

    def walk(node, where):
        if isinstance(node, dict):
            if node == VPC_CIDR:
                uses[where] = uses.get(where, 0) + 1
                return
            assert node != {"Ref": "VpcCidr"}, f"{where} uses VpcCidr without VpcCidrLeftEmpty"
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for name, resource in resources.items():
        walk(resource, name)
    walk(template.get("Outputs", {}), "Outputs")
    assert uses == {"Vpc": 1, "FunctionToDatabaseCidrEgress": 1, "FunctionToExistingEndpointsEgress": 1}
    assert resources["Vpc"]["Properties"]["CidrBlock"] == VPC_CIDR
    assert resources["Vpc"]["Condition"] == "CreateVpc"


def test_redis_lives_in_the_private_subnets(resources):
    subnets = resources["RedisSubnetGroup"]["Properties"]["SubnetIds"]
    assert subnets == [
        {"Fn::If": ["GivenSubnet1", {"Ref": "PrivateSubnet1Id"}, {"Ref": "PrivateSubnetA"}]},
        {"Fn::If": ["GivenSubnet2", {"Ref": "PrivateSubnet2Id"}, {"Ref": "PrivateSubnetB"}]},
    ]
    for name in ("PrivateSubnetA", "PrivateSubnetB"):
        assert resources[name]["Properties"]["MapPublicIpOnLaunch"] is False
    # Private means no route out: no gateway, no NAT, no route besides the implicit local one.
    for type_ in ("AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::Route", "AWS::EC2::EIP"):
        assert not of_type(resources, type_), type_


def test_vpc_flow_logs_are_on(resources):
    flow_logs = of_type(resources, "AWS::EC2::FlowLog")
    assert len(flow_logs) == 1
    flow_log = next(iter(flow_logs.values()))["Properties"]
    assert flow_log["ResourceType"] == "VPC"
    assert flow_log["ResourceId"] == {"Fn::If": ["CreateVpc", {"Ref": "Vpc"}, {"Ref": "VpcId"}]}
    assert flow_log["TrafficType"] == "ALL"
    assert flow_log["LogGroupName"] == {"Ref": "FlowLogGroup"}
    assert "RetentionInDays" in resources["FlowLogGroup"]["Properties"]
    assert "Condition" not in next(iter(flow_logs.values())), "flow logs must exist in both VPC modes"


def test_interface_endpoints_replace_a_nat_gateway(resources):
    endpoints = of_type(resources, "AWS::EC2::VPCEndpoint")
    services = {e["Properties"]["ServiceName"]["Fn::Sub"] for e in endpoints.values()}
    assert services == {"com.amazonaws.${AWS::Region}.ssm", "com.amazonaws.${AWS::Region}.cognito-idp"}
    for endpoint in endpoints.values():
        assert endpoint["Properties"]["VpcEndpointType"] == "Interface"
        assert endpoint["Properties"]["PrivateDnsEnabled"] is True
        assert endpoint["Properties"]["SecurityGroupIds"] == [{"Ref": "EndpointSecurityGroup"}]
    ingress = sg_rules(resources, "EndpointSecurityGroup", "ingress")
    assert [(r["FromPort"], r["SourceSecurityGroupId"]) for r in ingress] == [
        (443, {"Ref": "FunctionSecurityGroup"})
    ]


def test_every_rust_function_runs_in_the_vpc(resources):
    assert len(contract_route_functions(resources)) == 18
    assert set(route_functions(resources)) == set(contract_route_functions(resources)) | {NOT_FOUND}
    functions = rust_functions(resources)
    assert set(functions) == set(route_functions(resources)) | {APPLIER, MIGRATE}
    # The I/O-free functions (not-found, openapi) need no network at all, and are in the VPC
    # anyway: no internet egress, and the same subnets and group as the others, so no extra ENI.
    for name, function in functions.items():
        vpc = function["Properties"].get("VpcConfig")
        assert vpc, f"{name} has no VpcConfig"
        assert vpc["SecurityGroupIds"] == [{"Ref": "FunctionSecurityGroup"}]
        assert vpc["SubnetIds"] == resources["RedisSubnetGroup"]["Properties"]["SubnetIds"]
    # The hook calls only AWS APIs and stays out of the VPC on purpose (template.md).
    assert "VpcConfig" not in resources[HOOK]["Properties"]


def test_migrate_function_reads_its_own_parameter_only(resources):
    """The migrations need a login that may create tables; the service's own login need not,
    so the migrate function reads a parameter of its own, and only it."""
    function = resources[MIGRATE]["Properties"]
    assert resources[MIGRATE]["Metadata"]["BuildProperties"]["Binary"] == "migrate"
    assert function["Environment"]["Variables"] == {
        "MIGRATION_DATABASE_URL_SSM_PARAMETER": {"Fn::Sub": "/feature-flags/${Environment}/migration-database-url"}
    }
    assert "Events" not in function  # invoked by the hook and by make deploy only
    (policy,) = function["Policies"]
    assert_reads_and_decrypts_only(policy["Statement"], MIGRATION_PARAMETER)
    runtime = resources["FunctionRuntimePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert MIGRATION_PARAMETER not in runtime["Resource"]


def test_the_hook_runs_the_migrations_first(resources):
    hook = resources[HOOK]["Properties"]
    assert hook["Environment"]["Variables"]["MIGRATE_FUNCTION_NAME"] == {"Ref": MIGRATE}
    statements = hook["Policies"][0]["Statement"]
    invoke = [s for s in statements if s["Action"] == "lambda:InvokeFunction"]
    assert {"Fn::GetAtt": [MIGRATE, "Arn"]} in [s["Resource"] for s in invoke]
    code = (ROOT / hook["CodeUri"] / "index.py").read_text()
    assert code.index("apply_migrations()") < code.index("check_health(target)")


def test_make_deploy_runs_the_migrations_after_the_stack_update():
    """A new stack runs no pre-traffic hook (there is no old version to shift from)."""
    infra = (ROOT / "mk" / "infra.mk").read_text()
    deploy = infra[infra.index("\ndeploy:"):infra.index("\nlogs:")]
    assert deploy.index("deploy --config-env") < deploy.index("tools/invoke_migrate.py $(ENV)")
    # The new versions read the published JWKS copy at init (CognitoJwksSource=parameter).
    assert deploy.index("tools/publish_jwks.py $(ENV)") < deploy.index("$(SAM) deploy --config-env")


# --- Redis -----------------------------------------------------------------------------------


def test_redis_is_encrypted_in_transit_and_at_rest_with_an_auth_token(template, resources):
    redis = resources["RedisReplicationGroup"]["Properties"]
    assert redis["Engine"] == "redis"
    assert param_default(template, redis["EngineVersion"]).startswith("7.")
    assert redis["TransitEncryptionEnabled"] is True
    assert redis["AtRestEncryptionEnabled"] is True
    assert redis["KmsKeyId"] == {"Ref": "ServiceKey"}
    assert redis["AuthToken"] == {"Fn::Sub": "{{resolve:secretsmanager:${RedisAuthSecret}:SecretString:token}}"}
    secret = resources["RedisAuthSecret"]["Properties"]["GenerateSecretString"]
    assert secret["GenerateStringKey"] == "token"
    assert secret["ExcludePunctuation"] is True
    assert 16 <= secret["PasswordLength"] <= 128  # ElastiCache AUTH token limits


def test_redis_size_and_optional_replica(template, resources):
    redis = resources["RedisReplicationGroup"]["Properties"]
    assert param_default(template, redis["CacheNodeType"]) == "cache.t4g.micro"
    assert redis["NumCacheClusters"] == {"Fn::If": ["HasRedisReplica", 2, 1]}
    assert redis["AutomaticFailoverEnabled"] == {"Fn::If": ["HasRedisReplica", True, False]}
    assert redis["MultiAZEnabled"] == {"Fn::If": ["HasRedisReplica", True, False]}
    assert template["Parameters"]["EnableRedisReplica"]["Default"] == "false"
    # One parameter flips the three properties, which fails as one update of an existing
    # stack: its description points to the two-deployment procedure.
    description = template["Parameters"]["EnableRedisReplica"]["Description"]
    assert "Turning the Redis replica on or off" in description
    doc = (ROOT / "docs/deployment/first-deployment.md").read_text()
    assert "## Turning the Redis replica on or off" in doc
    for prop in ("NumCacheClusters", "AutomaticFailoverEnabled", "MultiAZEnabled"):
        assert prop in description and prop in doc


def test_redis_alarms_cover_cpu_memory_evictions_and_connections(resources):
    alarms = of_type(resources, "AWS::CloudWatch::Alarm").values()
    metrics = {
        a["Properties"]["MetricName"]
        for a in alarms
        if a["Properties"].get("Namespace") == "AWS/ElastiCache" and "Condition" not in a
    }
    assert metrics == {"EngineCPUUtilization", "DatabaseMemoryUsagePercentage", "Evictions", "CurrConnections"}
    for alarm in alarms:
        if alarm["Properties"].get("Namespace") == "AWS/ElastiCache":
            assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlertsTopic"}]


# --- functions and routes ----------------------------------------------------------------------


def test_one_function_and_route_per_contract_route(resources):
    seen = {}
    for name, function in contract_route_functions(resources).items():
        events = function["Properties"]["Events"]
        assert len(events) == 1, name
        event = next(iter(events.values()))
        assert event["Type"] == "HttpApi"
        props = event["Properties"]
        assert props["ApiId"] == {"Ref": "HttpApi"}
        key = (props["Method"], props["Path"])
        assert key not in seen, f"{key} served twice"
        seen[key] = name
        binary = function["Metadata"]["BuildProperties"]["Binary"]
        assert binary == ROUTES[key][0], f"{name}: {key} must be built from {ROUTES[key][0]}"
        assert function["Properties"]["FunctionName"] == {"Fn::Sub": f"feature-flags-${{Environment}}-{binary}"}
    assert set(seen) == set(ROUTES)
    assert len(seen) == 18


def test_the_template_route_table_is_the_rust_route_table(source_template, resources):
    """template.yaml's route table (issue 13), routes.rs and the contract (ROUTES) agree.

    Every Rust route has a row with its binary, method and path, hence a function of that
    binary on that route, a cargo binary and a sample event; the table has one more row, the
    $default function, and the scheduled applier is the one Rust function outside the table.
    """
    rust = rust_routes()
    assert {(method, path): binary for binary, method, path in rust.values()} == {
        key: binary for key, (binary, _admin) in ROUTES.items()
    }, "routes.rs and the contract's route list (ROUTES above) differ"
    table = source_template["Mappings"]["Routes"]
    identifier, collection, _body = source_template["Resources"]["Fn::ForEach::Routes"]
    assert identifier == "Route"
    assert collection == list(table), "Fn::ForEach::Routes must loop over the route table's rows, in order"
    assert set(table) == set(rust) | {"NotFound"}
    for variant, (binary, method, path) in rust.items():
        row = table[variant]
        assert (row["Binary"], row["Method"], row["Path"]) == (binary, method, path), variant
        assert row["Description"].startswith(f"{method} {path} - "), variant
        function = resources[f"{variant}Function"]
        assert function["Metadata"]["BuildProperties"]["Binary"] == binary, variant
        assert (event_of(function)["Method"], event_of(function)["Path"]) == (method, path), variant
        main = (ROOT / "crates" / "flags-api" / "src" / "bin" / f"{binary}.rs").read_text()
        # The OpenAPI document is built in: its function reads no configuration at all.
        runs = "Function::OpenApi" if variant == "OpenApi" else f"Function::Route(Route::{variant})"
        assert f"lambda::main({runs})" in main, binary
        assert (ROOT / "events" / f"{binary}.json").is_file(), f"events/{binary}.json"
    # The $default route: a row of the table, no route of Rust's.
    row = table["NotFound"]
    assert (row["Binary"], row["Method"], row["Path"]) == (NOT_FOUND_BINARY, *DEFAULT_ROUTE_EVENT)
    assert resources[NOT_FOUND]["Metadata"]["BuildProperties"]["Binary"] == NOT_FOUND_BINARY
    assert (ROOT / "events" / f"{NOT_FOUND_BINARY}.json").is_file()
    # The scheduled applier: EventBridge's, outside the table.
    applier = resources[APPLIER]
    assert applier["Metadata"]["BuildProperties"]["Binary"] == "apply-schedules"
    assert "Events" not in applier["Properties"]
    (rule,) = of_type(resources, "AWS::Events::Rule").values()
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [APPLIER, "Arn"]}
    assert (ROOT / "events" / "apply-schedules.json").is_file()
    assert set(rust_functions(resources)) == {f"{variant}Function" for variant in table} | {APPLIER, MIGRATE}


def test_the_io_free_functions_are_the_rows_with_the_two_exceptions(source_template, resources):
    """The route table's optional columns are the I/O-free functions' two exceptions, both on
    each of their rows and none on any other row (the other routes read PostgreSQL and Redis:
    runtime policy, cache metric filters)."""
    table = source_template["Mappings"]["Routes"]
    assert IO_FREE <= {f"{variant}Function" for variant in table}
    for variant, row in table.items():
        exceptions = {key: row[key] for key in IO_FREE_EXCEPTIONS if key in row}
        expected = IO_FREE_EXCEPTIONS if f"{variant}Function" in IO_FREE else {}
        assert exceptions == expected, variant
    # Both are route functions of the table: openapi a contract route, not-found the $default one.
    assert IO_FREE - {NOT_FOUND} <= set(contract_route_functions(resources))


def test_functions_build_the_flags_api_binaries_with_cargo_lambda(template, resources):
    globals_ = template["Globals"]["Function"]
    assert globals_["Runtime"] == "provided.al2023"
    assert globals_["Architectures"] == ["arm64"]
    assert globals_["Handler"] == "bootstrap"
    assert globals_["Tracing"] == "Active"
    assert globals_["LoggingConfig"] == {"LogFormat": "JSON"}
    for name, function in rust_functions(resources).items():
        assert function["Metadata"]["BuildMethod"] == "rust-cargolambda", name
        assert function["Properties"]["CodeUri"] == ".", name
        for key in ("Runtime", "Architectures", "Handler", "Tracing"):
            assert key not in function["Properties"], f"{name} overrides the global {key}"


def test_function_environment(template):
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables == {
        "DATABASE_URL_SSM_PARAMETER": {"Fn::Sub": "/feature-flags/${Environment}/database-url"},
        "REDIS_URL_SSM_PARAMETER": {
            "Fn::If": [
                "UseRedisCache",
                {"Fn::Sub": "/feature-flags/${Environment}/redis-url"},
                {"Ref": "AWS::NoValue"},
            ]
        },
        "FLAG_CACHE_TTL_SECONDS": {"Ref": "FlagCacheTtlSeconds"},
        "COGNITO_USER_POOL_ID": {"Ref": "CognitoUserPoolId"},
        "COGNITO_CLIENT_ID": {"Ref": "CognitoClientId"},
        "COGNITO_JWKS_SSM_PARAMETER": {
            "Fn::If": [
                "JwksFromParameter",
                {"Fn::Sub": "/feature-flags/${Environment}/cognito-jwks"},
                {"Ref": "AWS::NoValue"},
            ]
        },
        "RUST_LOG": "info",
    }
    assert template["Parameters"]["FlagCacheTtlSeconds"]["Default"] == 300
    assert template["Parameters"]["RedisCacheEnabled"]["Default"] == "true"


def test_functions_may_read_only_their_two_parameters(template, resources):
    for name, function in rust_functions(resources).items():
        if name in IO_FREE:
            # Exception: they read no parameter (no database, no Redis), so they get no policy
            # beyond SAM's logging/VPC/X-Ray ones (test_io_free_functions_have_no_permission).
            assert "Policies" not in function["Properties"], name
            continue
        if name == MIGRATE:
            # Exception: its own parameter only (test_migrate_function_reads_its_own_parameter_only).
            continue
        assert function["Properties"]["Policies"] == [{"Ref": "FunctionRuntimePolicy"}], name
    statements = deployed(
        resources["FunctionRuntimePolicy"]["Properties"]["PolicyDocument"]["Statement"], template, {}
    )
    assert len(statements) == 2
    # The functions read both URLs with one GetParameters call (crates/flags-api/src/lambda.rs).
    assert_reads_and_decrypts_only(statements, SERVICE_PARAMETERS)


SERVICE_PARAMETERS = [
    {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/feature-flags/${Environment}/database-url"},
    {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/feature-flags/${Environment}/redis-url"},
]


JWKS_PARAMETER = {
    "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/feature-flags/${Environment}/cognito-jwks"
}


def test_a_pool_with_a_domain_gets_the_jwks_from_its_published_copy(template, resources):
    # A user pool with a domain does not serve its JWKS through the cognito-idp endpoint:
    # CognitoJwksSource=parameter points the functions at the copy `make publish-jwks` writes.
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    policy = resources["FunctionRuntimePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    ssm_endpoint = resources["SsmEndpoint"]["Properties"]["PolicyDocument"]
    by_default = {}
    published = {"CognitoJwksSource": "parameter"}
    assert template["Parameters"]["CognitoJwksSource"]["Default"] == "endpoint"

    assert "COGNITO_JWKS_SSM_PARAMETER" not in deployed(variables, template, by_default)
    assert evaluate(template, {"Condition": "CreateCognitoEndpoint"}, by_default)
    assert resources["CognitoIdpEndpoint"]["Condition"] == "CreateCognitoEndpoint"

    assert deployed(variables, template, published)["COGNITO_JWKS_SSM_PARAMETER"] == {
        "Fn::Sub": "/feature-flags/${Environment}/cognito-jwks"
    }
    assert not evaluate(template, {"Condition": "CreateCognitoEndpoint"}, published)
    read, decrypt = deployed(policy, template, published)
    # Read in the same call as the URLs; nothing to decrypt: the JWKS is public, a String.
    assert read["Resource"] == [*SERVICE_PARAMETERS, JWKS_PARAMETER]
    assert decrypt["Condition"]["StringEquals"]["kms:EncryptionContext:PARAMETER_ARN"] == SERVICE_PARAMETERS
    # The stack's own SSM endpoint serves it too.
    (statement,) = deployed(ssm_endpoint, template, published)["Statement"]
    assert statement["Resource"] == [*SERVICE_PARAMETERS, JWKS_PARAMETER]
    (statement,) = deployed(ssm_endpoint, template, by_default)["Statement"]
    assert statement["Resource"] == SERVICE_PARAMETERS


def assert_reads_and_decrypts_only(statements: list, parameters) -> None:
    """Two statements: read `parameters` (one ARN or a list), decrypt them through SSM only."""
    ssm, kms = statements
    assert (ssm["Effect"], ssm["Resource"]) == ("Allow", parameters)
    assert set(ssm["Action"]) == {"ssm:GetParameters", "ssm:GetParameter"}
    assert (kms["Effect"], kms["Action"]) == ("Allow", "kms:Decrypt")
    condition = kms["Condition"]["StringEquals"]
    assert condition["kms:ViaService"] == {"Fn::Sub": "ssm.${AWS::Region}.amazonaws.com"}
    assert condition["kms:EncryptionContext:PARAMETER_ARN"] == parameters


def test_no_jwt_authorizer_the_handlers_verify_admin_tokens(template, resources):
    # Contract 2.3/2.4: the admin handlers verify the Cognito access token themselves (JWKS,
    # token_use "access", client_id) and answer 401/403 with the contract's bodies. An API
    # Gateway JWT authorizer would answer {"message":"Unauthorized"} itself and accept ID tokens.
    api = resources["HttpApi"]["Properties"]
    assert "Auth" not in api, "no authorizer (and so no DefaultAuthorizer) on the HTTP API"
    for name, function in route_functions(resources).items():
        assert "Auth" not in event_of(function), f"{name}: a route event names an authorizer"
    assert "Authorizer" not in json.dumps(resources["HttpApi"])
    assert not of_type(resources, "AWS::ApiGatewayV2::Authorizer")
    # What the handlers verify tokens with (test_function_environment checks the variables).
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["COGNITO_USER_POOL_ID"] == {"Ref": "CognitoUserPoolId"}
    assert variables["COGNITO_CLIENT_ID"] == {"Ref": "CognitoClientId"}
    for parameter in ("CognitoUserPoolId", "CognitoClientId"):
        description = template["Parameters"][parameter]["Description"]
        assert "authorizer" not in description.lower(), parameter
    # The handlers fetch the JWKS through the cognito-idp endpoint (no NAT gateway).
    assert "CognitoIdpEndpoint" in resources


def test_stage_throttling_is_the_flood_protection(template, resources, transformed):
    settings = resources["HttpApi"]["Properties"]["DefaultRouteSettings"]
    assert settings == {
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
    }
    assert param_default(template, settings["ThrottlingBurstLimit"]) == 200
    assert param_default(template, settings["ThrottlingRateLimit"]) == 100
    # No route overrides them ($default included).
    for name, function in route_functions(resources).items():
        assert "RouteSettings" not in event_of(function), name
    (stage,) = of_type(transformed["Resources"], "AWS::ApiGatewayV2::Stage").values()
    assert stage["Properties"]["DefaultRouteSettings"] == settings
    assert "RouteSettings" not in stage["Properties"]


def test_access_log_line_is_json_without_authorizer_fields(resources):
    log_format = resources["HttpApi"]["Properties"]["AccessLogSettings"]["Format"]
    fields = json.loads(log_format)
    assert fields["routeKey"] == "$context.routeKey"  # "$default" for the not-found requests
    assert fields["status"] == "$context.status"
    assert not [k for k, v in fields.items() if "authorizer" in (k + v).lower()], fields


def test_default_route_goes_to_the_not_found_function(resources):
    defaults = {
        name: f for name, f in route_functions(resources).items() if event_of(f)["Path"] == "$default"
    }
    assert list(defaults) == [NOT_FOUND]
    function = resources[NOT_FOUND]
    assert function["Metadata"]["BuildMethod"] == "rust-cargolambda"
    assert function["Metadata"]["BuildProperties"] == {"Binary": NOT_FOUND_BINARY}
    props = function["Properties"]
    assert props["FunctionName"] == {"Fn::Sub": f"feature-flags-${{Environment}}-{NOT_FOUND_BINARY}"}
    event = event_of(function)
    assert event["ApiId"] == {"Ref": "HttpApi"}
    assert (event["Method"], event["Path"]) == DEFAULT_ROUTE_EVENT
    assert event["PayloadFormatVersion"] == "2.0"
    assert DEFAULT_ROUTE_EVENT not in ROUTES, "the $default route is not a route of the contract"


@pytest.mark.parametrize("function", sorted(IO_FREE))
def test_io_free_functions_have_no_permission(function, transformed):
    # not-found answers from the event alone, openapi with the document built into its binary:
    # no SSM parameter, no database, no Redis, no JWKS.
    role = transformed["Resources"][f"{function}Role"]["Properties"]
    assert "Policies" not in role
    assert sorted(role["ManagedPolicyArns"]) == [
        "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
    ]


def test_translated_api_has_the_18_routes_and_the_default_route_without_authorization(transformed):
    apis = of_type(transformed["Resources"], "AWS::ApiGatewayV2::Api")
    assert len(apis) == 1
    body = next(iter(apis.values()))["Properties"]["Body"]
    operations = {}
    for path, methods in body["paths"].items():
        for method, operation in methods.items():
            operations[(method.upper(), path)] = operation
    assert set(operations) == set(ROUTES) | {DEFAULT_ROUTE_OPERATION}
    for key, operation in operations.items():
        assert "security" not in operation, key
        assert operation.get("isDefaultRoute", False) is (key == DEFAULT_ROUTE_OPERATION), key
        integration = operation["x-amazon-apigateway-integration"]
        assert integration["payloadFormatVersion"] == "2.0"
        # API Gateway invokes the `live` alias, whose traffic CodeDeploy shifts.
        assert "Aliaslive" in integration["uri"]["Fn::Sub"]
    default_uri = operations[DEFAULT_ROUTE_OPERATION]["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
    assert f"${{{NOT_FOUND}Aliaslive}}" in default_uri
    assert "securitySchemes" not in body.get("components", {})
    assert not of_type(transformed["Resources"], "AWS::ApiGatewayV2::Authorizer")


# --- CORS ------------------------------------------------------------------------------------

CORS_ORIGINS = ["https://app.example.com", "http://localhost:5173"]


def deployed_cors(translated: dict, template: dict, parameters: dict):
    """The CORS configuration of the translated HTTP API for these parameter values, or None.

    SAM writes CorsConfiguration into the API's OpenAPI body (x-amazon-apigateway-cors), under
    the template's Fn::If on HasCorsOrigins.
    """
    (api,) = of_type(translated["Resources"], "AWS::ApiGatewayV2::Api").values()
    assert "CorsConfiguration" not in api["Properties"], "CORS lives in the body only"
    return deployed(api["Properties"]["Body"], template, parameters).get("x-amazon-apigateway-cors")


def test_without_cors_origins_the_api_has_no_cors_configuration(template, transformed):
    # Server-side clients need no CORS; left empty, API Gateway adds no CORS header and answers
    # no preflight (an OPTIONS request gets the $default function's 404).
    parameter = template["Parameters"]["CorsAllowedOrigins"]
    assert (parameter["Type"], parameter["Default"]) == ("CommaDelimitedList", "")
    assert deployed_cors(transformed, template, {}) is None
    assert deployed_cors(transformed, template, {"CorsAllowedOrigins": [""]}) is None


def test_cors_origins_reach_the_api_with_credentials_and_the_contract_headers(template):
    parameters = {"CorsAllowedOrigins": CORS_ORIGINS}
    cors = deployed_cors(translate(template, parameters), template, parameters)
    assert cors["allowOrigins"] == CORS_ORIGINS
    assert cors["allowCredentials"] is True
    # The methods of the contract's routes, the request headers its clients send (bearer
    # token, JSON bodies, the OFREP ETag, the environment header) and the response headers
    # a page may read.
    assert sorted(cors["allowMethods"]) == ["DELETE", "GET", "POST"] == sorted({m for m, _path in ROUTES})
    assert sorted(cors["allowHeaders"]) == ["authorization", "content-type", "if-none-match", "x-environment"]
    assert sorted(cors["exposeHeaders"]) == ["etag", "retry-after"]
    # "*" with credentials: browsers and API Gateway refuse it, and so does the stack's rule.
    (assertion,) = template["Rules"]["CorsOriginsAreNamed"]["Assertions"]
    assert "RuleCondition" not in template["Rules"]["CorsOriginsAreNamed"]
    assert evaluate(template, assertion["Assert"], parameters) is True
    assert evaluate(template, assertion["Assert"], {}) is True
    assert evaluate(template, assertion["Assert"], {"CorsAllowedOrigins": ["*"]}) is False
    assert evaluate(template, assertion["Assert"], {"CorsAllowedOrigins": [CORS_ORIGINS[0], "*"]}) is False


# --- logs and metrics --------------------------------------------------------------------------


def test_each_function_logs_to_its_own_group_with_the_cache_metric_filters(resources):
    filters = of_type(resources, "AWS::Logs::MetricFilter").values()
    # Exception: the I/O-free functions read no cache, so their groups have no cache filters
    # (their own groups and retention are checked by the last test of this file).
    for name in IO_FREE:
        group = resources[name]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert not [f for f in filters if f["Properties"]["LogGroupName"] == {"Ref": group}], name
    for name, function in route_functions(resources).items():
        if name in IO_FREE:
            continue
        group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert "RetentionInDays" in resources[group]["Properties"]
        found = {}
        for f in filters:
            if f["Properties"]["LogGroupName"] == {"Ref": group}:
                (transformation,) = f["Properties"]["MetricTransformations"]
                assert transformation["MetricNamespace"] == {"Fn::Sub": "FeatureFlags/${Environment}"}
                found[f["Properties"]["FilterPattern"]] = transformation["MetricName"]
        assert found == {
            '{ $.cache = "hit" }': "CacheHit",
            '{ $.cache = "miss" }': "CacheMiss",
            '{ $.cache = "unavailable" }': "CacheUnavailable",
        }, name


def test_every_log_group_has_a_retention(resources):
    for name, group in of_type(resources, "AWS::Logs::LogGroup").items():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name


# --- canary: AC 13 -------------------------------------------------------------------------------


def test_canary_shifts_5_percent_for_60_minutes(resources):
    config = resources["CanaryDeploymentConfig"]
    assert config["Type"] == "AWS::CodeDeploy::DeploymentConfig"
    props = config["Properties"]
    assert props["ComputePlatform"] == "Lambda"
    assert props["TrafficRoutingConfig"] == {
        "Type": "TimeBasedCanary",
        "TimeBasedCanary": {"CanaryPercentage": 5, "CanaryInterval": 60},
    }


# The smallest sample a canary alarm judges a rate or a p95 on (invocations a minute), and the
# failures in a minute that count as a breach below it.
MIN_SAMPLE = 20
MIN_FAILURES = 3


def version_dimensions(function: str) -> list:
    return [
        {"Name": "FunctionName", "Value": {"Ref": function}},
        {"Name": "Resource", "Value": {"Fn::Sub": f"${{{function}}}:live"}},
        {"Name": "ExecutedVersion", "Value": {"Fn::GetAtt": [function, "Version.Version"]}},
    ]


def metric_queries(alarm: dict) -> dict:
    return {m["Id"]: m for m in alarm["Metrics"]}


def test_every_route_function_deploys_through_the_canary_with_alarms_and_the_hook(resources):
    """A canary rolls back on its own version's alarms only: the service-wide alarms see every
    version, so an incident elsewhere would roll back the fix being deployed for it."""
    alarms = of_type(resources, "AWS::CloudWatch::Alarm")
    for name, function in route_functions(resources).items():
        props = function["Properties"]
        assert props["AutoPublishAlias"] == "live", name
        preference = props["DeploymentPreference"]
        assert preference["Type"] == {"Ref": "CanaryDeploymentConfig"}, name
        assert preference["Hooks"] == {"PreTraffic": {"Ref": HOOK}}, name
        assert preference.get("Enabled", True) is True
        names = [a["Ref"] for a in preference["Alarms"]]
        short = name.removesuffix("Function")
        assert names == [f"{short}ErrorsAlarm", f"{short}P95DurationAlarm"], name
        for alarm_name in names:
            queries = metric_queries(alarms[alarm_name]["Properties"])
            lambda_metrics = [
                q["MetricStat"]["Metric"] for q in queries.values()
                if "MetricStat" in q and q["MetricStat"]["Metric"]["Namespace"] == "AWS/Lambda"
            ]
            assert lambda_metrics, alarm_name
            for metric in lambda_metrics:
                assert metric["Dimensions"] == version_dimensions(name), alarm_name


def test_canary_errors_count_function_errors_and_5xx_answers_of_the_version(resources):
    for name in route_functions(resources):
        alarm = resources[f"{name.removesuffix('Function')}ErrorsAlarm"]["Properties"]
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0.1, "GreaterThanThreshold")
        assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (5, 2)
        queries = metric_queries(alarm)
        assert queries["errors"]["MetricStat"]["Metric"]["MetricName"] == "Errors"
        assert queries["invocations"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
        # The EMF metric the Lambda edge writes for each 5xx answer (flags-api lambda.rs).
        server = queries["serverErrors"]["MetricStat"]["Metric"]
        assert server == {
            "Namespace": "FeatureFlags",
            "MetricName": "ServerErrorResponses",
            "Dimensions": [version_dimensions(name)[0], version_dimensions(name)[2]],
        }
        assert queries["failures"]["Expression"] == "FILL(errors, 0) + FILL(serverErrors, 0)"
        returned = [q for q in queries.values() if q.get("ReturnData")]
        assert [q["Id"] for q in returned] == ["failureRate"]
        assert returned[0]["Expression"] == (
            f"IF(invocations >= {MIN_SAMPLE}, 100 * failures / invocations, "
            f"IF(failures >= {MIN_FAILURES}, 100, 0))"
        )


def test_canary_p95_waits_for_a_minimum_sample(template, resources):
    for name in route_functions(resources):
        alarm = resources[f"{name.removesuffix('Function')}P95DurationAlarm"]["Properties"]
        assert param_default(template, alarm["Threshold"]) == 100
        assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (5, 3)
        queries = metric_queries(alarm)
        stat = queries["p95"]["MetricStat"]
        assert (stat["Metric"]["MetricName"], stat["Stat"]) == ("Duration", "p95")
        assert queries["invocations"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
        returned = [q for q in queries.values() if q.get("ReturnData")]
        assert [q["Expression"] for q in returned] == [f"IF(invocations >= {MIN_SAMPLE}, p95, 0)"]


def test_service_wide_alarms_notify_and_roll_nothing_back(resources):
    deployed = {
        a["Ref"]
        for f in route_functions(resources).values()
        for a in f["Properties"]["DeploymentPreference"]["Alarms"]
    }
    expressions = {
        "Api5xxRateAlarm": f"IF(requests >= {MIN_SAMPLE}, 100 * FILL(errors, 0) / requests, 0)",
        "CacheUnavailableRateAlarm": f"IF(reads >= {MIN_SAMPLE}, 100 * FILL(unavailable, 0) / reads, 0)",
    }
    for name, expression in expressions.items():
        alarm = resources[name]["Properties"]
        assert name not in deployed
        assert alarm["AlarmActions"] == [{"Ref": "AlertsTopic"}]
        assert "notification only" in alarm["AlarmDescription"]["Fn::Sub"]
        returned = [q for q in alarm["Metrics"] if q.get("ReturnData")]
        assert [q["Expression"] for q in returned] == [expression]
    unavailable = resources["CacheUnavailableRateAlarm"]["Properties"]
    used = {m["MetricStat"]["Metric"]["MetricName"] for m in unavailable["Metrics"] if "MetricStat" in m}
    assert used == {"CacheHit", "CacheMiss", "CacheUnavailable"}
    hit_rate = resources["CacheHitRateAlarm"]["Properties"]
    assert (hit_rate["Threshold"], hit_rate["ComparisonOperator"]) == (80, "LessThanThreshold")


def test_translated_deployment_groups_use_the_canary_alarms_and_hook(transformed):
    res = transformed["Resources"]
    groups = of_type(res, "AWS::CodeDeploy::DeploymentGroup")
    # the 18 route functions and the $default one; the scheduled applier has no canary
    assert len(groups) == 19
    for name, group in groups.items():
        props = group["Properties"]
        assert props["DeploymentConfigName"] == {"Ref": "CanaryDeploymentConfig"}
        assert props["AlarmConfiguration"]["Enabled"] is True
        # The new version's errors and p95 (see above).
        function = name.removesuffix("DeploymentGroup")
        assert function in res, name
        assert len(props["AlarmConfiguration"]["Alarms"]) == 2, name
        assert "DEPLOYMENT_STOP_ON_ALARM" in props["AutoRollbackConfiguration"]["Events"]
    aliases = of_type(res, "AWS::Lambda::Alias")
    assert len(aliases) == 19
    for alias in aliases.values():
        update = alias["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
        assert update["BeforeAllowTrafficHook"] == {"Ref": HOOK}


def test_pre_traffic_hook(resources):
    hook = resources[HOOK]["Properties"]
    assert hook["Runtime"] == "python3.12"
    assert hook["Handler"] == "index.handler"
    # The CodeDeploy role SAM creates may only invoke functions named CodeDeployHook_*.
    assert hook["FunctionName"]["Fn::Sub"].startswith("CodeDeployHook_")
    assert hook["Environment"]["Variables"]["HEALTH_FUNCTION_VERSION_ARN"] == {"Ref": "HealthFunction.Version"}
    # Built by infra/pre-traffic-hook/Makefile: a copy of index.py, no Python needed to build.
    assert hook["CodeUri"] == "infra/pre-traffic-hook/"
    assert resources[HOOK]["Metadata"]["BuildMethod"] == "makefile"
    code = (ROOT / hook["CodeUri"] / "index.py").read_text()
    assert "put_lifecycle_event_hook_execution_status" in code
    actions = {
        a
        for statement in hook["Policies"][0]["Statement"]
        for a in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    }
    assert actions == {
        "codedeploy:PutLifecycleEventHookExecutionStatus",
        "codedeploy:GetDeployment",
        "codedeploy:GetApplicationRevision",
        "lambda:InvokeFunction",
    }
    skipped = {s["id"] for s in resources[HOOK]["Metadata"]["checkov"]["skip"]}
    assert skipped == {"CKV_AWS_117", "CKV_AWS_115", "CKV_AWS_116"}


# --- scheduled applier: flag schedules, then pending invalidations -----------------------------


def test_applier_function_builds_its_binary_and_serves_no_route(template, resources):
    function = resources[APPLIER]
    assert function["Type"] == "AWS::Serverless::Function"
    assert function["Metadata"]["BuildMethod"] == "rust-cargolambda"
    assert function["Metadata"]["BuildProperties"] == {"Binary": "apply-schedules"}
    props = function["Properties"]
    assert props["FunctionName"] == {"Fn::Sub": "feature-flags-${Environment}-apply-schedules"}
    assert props["CodeUri"] == "."
    assert APPLIER not in route_functions(resources)
    # Same runtime, architecture, tracing, logs, key and environment as the route functions:
    # nothing overridden locally (test_functions_build_the_flags_api_binaries_with_cargo_lambda).
    for key in ("Runtime", "Architectures", "Handler", "Tracing", "KmsKeyArn", "Environment"):
        assert key not in props, f"the applier overrides the global {key}"


def test_the_sweeper_is_replaced_by_the_applier(resources):
    # The applier runs the pending-invalidation sweep itself: no second scheduled function.
    assert not [name for name in resources if "Sweep" in name]
    binaries = [r["Metadata"]["BuildProperties"]["Binary"] for r in rust_functions(resources).values()]
    assert "sweep-invalidations" not in binaries
    assert NOT_FOUND_BINARY in binaries and "openapi" in binaries
    assert len(binaries) == len(set(binaries)) == 21  # 18 routes + not-found ($default) + the applier + migrate


def test_applier_runs_in_the_vpc_with_the_functions_security_group(resources):
    vpc = resources[APPLIER]["Properties"]["VpcConfig"]
    assert vpc["SecurityGroupIds"] == [{"Ref": "FunctionSecurityGroup"}]
    assert vpc["SubnetIds"] == resources["RedisSubnetGroup"]["Properties"]["SubnetIds"]


def test_applier_runs_every_minute_and_ends_before_the_next_run(template, resources):
    props = resources[APPLIER]["Properties"]
    assert "Events" not in props, "the schedule is an explicit (tagged) rule, not a SAM event"
    rules = of_type(resources, "AWS::Events::Rule")
    assert list(rules) == ["ApplySchedulesSchedule"]
    rule = rules["ApplySchedulesSchedule"]["Properties"]
    # An EventBridge rule sends the standard "Scheduled Event" payload (events/apply-schedules.json).
    assert rule["Name"] == {"Fn::Sub": "feature-flags-${Environment}-apply-schedules"}
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert rule["State"] == "ENABLED"
    assert "EventPattern" not in rule
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [APPLIER, "Arn"]}
    assert "Input" not in target and "InputTransformer" not in target
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 0
    permission = resources["ApplySchedulesSchedulePermission"]["Properties"]
    assert permission["Action"] == "lambda:InvokeFunction"
    assert permission["FunctionName"] == {"Ref": APPLIER}
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert permission["SourceArn"] == {"Fn::GetAtt": ["ApplySchedulesSchedule", "Arn"]}
    assert props["Timeout"] < 60 and props["Timeout"] > template["Globals"]["Function"]["Timeout"]
    # A failed run is retried by the next scheduled one, never by Lambda alongside it.
    assert props["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    assert props["EventInvokeConfig"]["MaximumEventAgeInSeconds"] <= 60


def test_applier_reads_only_its_two_ssm_parameters(template, resources, transformed):
    props = resources[APPLIER]["Properties"]
    # The shared policy: GetParameters on the database and Redis URLs, decrypted through SSM only
    # (its statements are checked by test_functions_may_read_only_their_two_parameters).
    assert props["Policies"] == [{"Ref": "FunctionRuntimePolicy"}]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["DATABASE_URL_SSM_PARAMETER"] == {"Fn::Sub": "/feature-flags/${Environment}/database-url"}
    role = transformed["Resources"][f"{APPLIER}Role"]["Properties"]
    assert "Policies" not in role, "no inline policy: the applier gets nothing beyond the shared one"
    custom = [arn for arn in role["ManagedPolicyArns"] if not isinstance(arn, str)]
    assert custom == [{"Ref": "FunctionRuntimePolicy"}]
    assert all("ssm" not in arn.lower() for arn in role["ManagedPolicyArns"] if isinstance(arn, str))
    # The overdue metric is an Embedded Metric Format log line, not a PutMetricData call.
    assert "cloudwatch" not in str(role).lower()


def test_applier_errors_alarm_notifies_the_alert_topic(resources):
    props = resources["ApplySchedulesErrorsAlarm"]["Properties"]
    assert (props["Namespace"], props["MetricName"], props["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
    assert props["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": APPLIER}}]
    assert (props["Period"], props["EvaluationPeriods"]) == (300, 1)
    assert (props["Threshold"], props["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert props["TreatMissingData"] == "notBreaching"
    assert props["AlarmActions"] == [{"Ref": "AlertsTopic"}]
    assert props["OKActions"] == [{"Ref": "AlertsTopic"}]


def test_applier_overdue_alarm_fires_on_late_schedules_and_on_silence(resources):
    # The applier writes one EMF line per run: FeatureFlags / OverdueScheduleSeconds (Seconds),
    # dimension FunctionName, = how overdue the oldest still-due schedule is after the pass.
    props = resources["ApplySchedulesOverdueAlarm"]["Properties"]
    assert (props["Namespace"], props["MetricName"]) == ("FeatureFlags", "OverdueScheduleSeconds")
    assert props["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": APPLIER}}]
    assert props["Statistic"] == "Maximum"
    assert "ExtendedStatistic" not in props and "Metrics" not in props
    assert (props["Period"], props["EvaluationPeriods"]) == (300, 1)
    assert (props["Threshold"], props["ComparisonOperator"]) == (300, "GreaterThanThreshold")
    # No datapoint for five minutes means the applier is not running: schedules may be overdue.
    assert props["TreatMissingData"] == "breaching"
    errors = resources["ApplySchedulesErrorsAlarm"]["Properties"]
    assert props["AlarmActions"] == errors["AlarmActions"] == [{"Ref": "AlertsTopic"}]
    assert props.get("OKActions") == errors.get("OKActions")
    # No Unit filter: an alarm with a Unit matches only datapoints published with that unit.
    assert "Unit" not in props
    assert tags_of(props) == COST_TAGS


def test_applier_logs_to_its_own_group(resources):
    props = resources[APPLIER]["Properties"]
    group = resources[props["LoggingConfig"]["LogGroup"]["Ref"]]["Properties"]
    assert group["LogGroupName"] == {"Fn::Sub": "/aws/lambda/feature-flags-${Environment}-apply-schedules"}
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert group["KmsKeyId"] == {"Fn::GetAtt": ["ServiceKey", "Arn"]}


def test_applier_is_deployed_at_once_not_through_the_canary(resources, transformed):
    # No traffic to shift, and the pre-traffic hook only knows HTTP routes (template.md).
    props = resources[APPLIER]["Properties"]
    assert "AutoPublishAlias" not in props
    assert "DeploymentPreference" not in props
    res = transformed["Resources"]
    for alias in of_type(res, "AWS::Lambda::Alias").values():
        assert alias["Properties"]["FunctionName"] != {"Ref": APPLIER}
    # Never invoked by API Gateway.
    for permission in of_type(res, "AWS::Lambda::Permission").values():
        if permission["Properties"]["FunctionName"] == {"Ref": APPLIER}:
            assert permission["Properties"]["Principal"] != "apigateway.amazonaws.com"


def test_applier_checkov_suppressions_name_its_alarms(resources):
    skips = {s["id"]: s["comment"] for s in resources[APPLIER]["Metadata"]["checkov"]["skip"]}
    assert set(skips) == {"CKV_AWS_115", "CKV_AWS_116"}
    assert "ApplySchedulesErrorsAlarm" in skips["CKV_AWS_116"]
    assert "ApplySchedulesOverdueAlarm" in skips["CKV_AWS_116"]


# --- sample events (events/*.json, for sam local invoke and the Lambda emulator tests) -------------


def test_every_rust_function_has_a_sample_event_for_its_trigger(resources):
    events_dir = ROOT / "events"
    for name, function in rust_functions(resources).items():
        binary = function["Metadata"]["BuildProperties"]["Binary"]
        path = events_dir / f"{binary}.json"
        if name == NOT_FOUND:
            # Exception: optional. The function answers every event alike (its answer is checked
            # by the pre-traffic hook); when a sample exists, it is a $default-route event.
            if path.is_file():
                event = json.loads(path.read_text())
                assert event["version"] == "2.0", path.name
                assert event["routeKey"] == event["requestContext"]["routeKey"] == "$default", path.name
                assert event["rawPath"] == event["requestContext"]["http"]["path"], path.name
                assert "pathParameters" not in event, path.name
            continue
        assert path.is_file(), f"{name}: no {path.relative_to(ROOT)}"
        event = json.loads(path.read_text())
        if name == MIGRATE:
            # What the pre-traffic hook and `make deploy` send: the function reads no event.
            assert event == {}, path.name
            continue
        if name == APPLIER:
            assert (event["source"], event["detail-type"]) == ("aws.events", "Scheduled Event")
            assert event["resources"] == [f"arn:aws:events:{event['region']}:{event['account']}:rule/feature-flags-dev-{binary}"]
            continue
        (api,) = function["Properties"]["Events"].values()
        method, route = api["Properties"]["Method"], api["Properties"]["Path"]
        assert event["version"] == "2.0", path.name
        assert event["routeKey"] == event["requestContext"]["routeKey"] == f"{method} {route}", path.name
        assert event["requestContext"]["http"]["method"] == method, path.name
        assert event["rawPath"] == event["requestContext"]["http"]["path"], path.name
        params = re.findall(r"\{(\w+)\}", route)
        assert sorted(event.get("pathParameters", {})) == sorted(params), path.name
        expected = route
        for param in params:
            expected = expected.replace("{" + param + "}", event["pathParameters"][param])
        assert event["rawPath"] == expected, path.name
        if "body" in event:
            assert event["headers"]["content-length"] == str(len(event["body"].encode())), path.name
    assert not (events_dir / "sweep-invalidations.json").exists()


def test_schedule_sample_events(resources):
    create = json.loads((ROOT / "events" / "admin-create-schedule.json").read_text())
    assert json.loads(create["body"]) == {"scheduledAt": "2030-01-01T09:00:00.000Z", "updates": {"rolloutPercentage": 50}}
    assert create["headers"]["content-type"] == "application/json"
    cancel = json.loads((ROOT / "events" / "admin-cancel-schedule.json").read_text())
    assert str(uuid.UUID(cancel["pathParameters"]["scheduleId"])) == cancel["pathParameters"]["scheduleId"]
    for name in ("admin-create-schedule", "admin-list-schedules", "admin-cancel-schedule"):
        event = json.loads((ROOT / "events" / f"{name}.json").read_text())
        assert event["queryStringParameters"] == {"environment": "production"}, name


def test_admin_sample_events_carry_a_token_for_the_handler_and_no_authorizer_claims():
    # No API Gateway authorizer runs any more: the handler verifies the bearer token itself, so
    # an event with claims would describe a request API Gateway can no longer produce.
    admin_events = sorted((ROOT / "events").glob("admin-*.json"))
    assert len(admin_events) == 12
    for path in admin_events:
        event = json.loads(path.read_text())
        assert "authorizer" not in event["requestContext"], path.name
        assert event["headers"]["authorization"].startswith("Bearer "), path.name


def test_the_not_found_sample_event_is_a_default_route_event():
    event = json.loads((ROOT / "events" / "not-found.json").read_text())
    assert event["routeKey"] == event["requestContext"]["routeKey"] == "$default"
    assert event["rawPath"] == event["requestContext"]["http"]["path"]
    assert "pathParameters" not in event


# --- cost: AC 12 ------------------------------------------------------------------------------


def test_billing_alarm_on_elasticache_charges_above_50_usd(template, resources):
    alarm = resources["ElastiCacheBillingAlarm"]
    assert alarm["Condition"] == "CreateBillingAlarm"
    conditions = template["Conditions"]
    assert conditions["IsUsEast1"] == {"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]}
    assert {"Condition": "IsUsEast1"} in conditions["CreateBillingAlarm"]["Fn::And"]
    props = alarm["Properties"]
    assert (props["Namespace"], props["MetricName"]) == ("AWS/Billing", "EstimatedCharges")
    assert {d["Name"]: d["Value"] for d in props["Dimensions"]} == {
        "ServiceName": "AmazonElastiCache",
        "Currency": "USD",
    }
    assert param_default(template, props["Threshold"]) == 50
    assert props["ComparisonOperator"] == "GreaterThanThreshold"
    assert props["AlarmActions"] == [{"Ref": "AlertsTopic"}]


def test_alert_topic_is_kms_encrypted_with_an_email_subscription(template, resources):
    topic = resources["AlertsTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "ServiceKey"}
    assert resources["ServiceKey"]["Properties"]["EnableKeyRotation"] is True
    subscription = resources["AlertsEmailSubscription"]["Properties"]
    assert subscription == {"TopicArn": {"Ref": "AlertsTopic"}, "Protocol": "email", "Endpoint": {"Ref": "AlertEmail"}}
    # CloudWatch may use the key, or alarms could not publish to the encrypted topic.
    principals = [s["Principal"] for s in resources["ServiceKey"]["Properties"]["KeyPolicy"]["Statement"]]
    assert {"Service": "cloudwatch.amazonaws.com"} in principals


def test_monthly_elasticache_budget_of_50_usd(template, resources):
    budget = resources["ElastiCacheBudget"]
    assert "IsUsEast1" not in str(budget.get("Condition")), "the budget works from any region"
    spec = budget["Properties"]["Budget"]
    assert (spec["BudgetType"], spec["TimeUnit"]) == ("COST", "MONTHLY")
    assert param_default(template, spec["BudgetLimit"]["Amount"]) == 50
    assert spec["BudgetLimit"]["Unit"] == "USD"
    assert spec["CostFilters"] == {"Service": ["Amazon ElastiCache"]}
    for notification in budget["Properties"]["NotificationsWithSubscribers"]:
        assert notification["Subscribers"] == [{"SubscriptionType": "EMAIL", "Address": {"Ref": "AlertEmail"}}]


def test_cost_allocation_tags_on_every_taggable_resource(template, transformed):
    assert template["Globals"]["Function"]["Tags"] == COST_TAGS
    assert template["Globals"]["HttpApi"]["Tags"] == COST_TAGS
    untagged = []
    for name, resource in transformed["Resources"].items():
        properties = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource["Type"]).schema["properties"]
        key = "Tags" if "Tags" in properties else "ResourceTags" if "ResourceTags" in properties else None
        if key is None:
            continue
        tags = tags_of(resource.get("Properties", {}), key)
        if resource["Type"] == "AWS::ApiGatewayV2::Api" and "Body" in resource["Properties"]:
            # SAM writes an HTTP API's tags into its OpenAPI body, where API Gateway reads them.
            for tag in resource["Properties"]["Body"].get("tags", []):
                tags[tag["name"]] = tag["x-amazon-apigateway-tag-value"]
        if any(tags.get(k) != v for k, v in COST_TAGS.items()):
            untagged.append(f"{name} ({resource['Type']})")
    assert not untagged, f"missing cost allocation tags: {untagged}"


def test_companion_billing_stack_for_other_regions(billing_template):
    resources = billing_template["Resources"]
    rule = billing_template["Rules"]["OnlyInUsEast1"]["Assertions"][0]["Assert"]
    assert rule == {"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]}
    (alarm,) = of_type(resources, "AWS::CloudWatch::Alarm").values()
    props = alarm["Properties"]
    assert (props["Namespace"], props["MetricName"]) == ("AWS/Billing", "EstimatedCharges")
    assert {d["Name"]: d["Value"] for d in props["Dimensions"]} == {
        "ServiceName": "AmazonElastiCache",
        "Currency": "USD",
    }
    assert param_default(billing_template, props["Threshold"]) == 50
    (topic,) = of_type(resources, "AWS::SNS::Topic").values()
    assert "KmsMasterKeyId" in topic["Properties"]
    (subscription,) = of_type(resources, "AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Protocol"] == "email"
    for name, resource in resources.items():
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource["Type"]).schema["properties"]
        if "Tags" in schema:
            tags = tags_of(resource["Properties"])
            assert tags.get("Service") == "ElastiCache" and tags.get("Feature") == "FeatureFlags", name


# --- suppressions ----------------------------------------------------------------------------


@pytest.mark.parametrize("path_fixture", ["template", "billing_template"])
def test_every_checkov_suppression_has_a_reason(request, path_fixture):
    for name, resource in request.getfixturevalue(path_fixture)["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), skip
            assert len(skip.get("comment", "")) > 40, f"{name}: {skip['id']} needs a written reason"


def test_translated_functions_keep_json_logs_in_their_own_group(transformed):
    functions = of_type(transformed["Resources"], "AWS::Lambda::Function")
    assert len(functions) == 22  # 18 routes + not-found ($default) + the applier + migrate + the pre-traffic hook
    for name, function in functions.items():
        props = function["Properties"]
        # SAM merges the global LogFormat with each function's LogGroup.
        assert props["LoggingConfig"] == {"LogFormat": "JSON", "LogGroup": {"Ref": f"{name.removesuffix('Function')}LogGroup"}}
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["Architectures"] == ["arm64"]
