"""samconfig.toml and docker-compose.yml: the deploy and local-run configuration of issue #4."""

from __future__ import annotations

import io
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ("dev", "staging", "prod")


@pytest.fixture(scope="module")
def samconfig() -> dict:
    return tomllib.loads((ROOT / "samconfig.toml").read_text())


def overrides(section: dict) -> dict:
    return dict(item.split("=", 1) for item in shlex.split(section["parameter_overrides"]))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_environment_deploys_its_own_stack(samconfig, template, env):
    deploy = samconfig[env]["deploy"]["parameters"]
    assert deploy["stack_name"] == f"feature-flags-{env}"
    assert samconfig[env]["global"]["parameters"]["stack_name"] == f"feature-flags-{env}"
    assert deploy["resolve_s3"] is True
    assert set(deploy["capabilities"].split()) == {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"}
    values = overrides(deploy)
    assert values["Environment"] == env
    parameters = template["Parameters"]
    assert set(values) <= set(parameters), set(values) - set(parameters)
    required = {name for name, p in parameters.items() if "Default" not in p}
    assert required <= set(values), f"{env} misses {required - set(values)}"
    for name, value in values.items():
        allowed = parameters[name].get("AllowedValues")
        if allowed and value != "REPLACE_ME":
            assert value in [str(a) for a in allowed], (name, value)
    assert dict(t.split("=", 1) for t in deploy["tags"].split()) == {
        "Service": "ElastiCache",
        "Feature": "FeatureFlags",
        "Environment": env,
    }


def test_prod_has_the_redis_replica_and_confirms_change_sets(samconfig):
    prod = samconfig["prod"]["deploy"]["parameters"]
    assert overrides(prod)["EnableRedisReplica"] == "true"
    assert prod["confirm_changeset"] is True


def test_no_secret_in_samconfig():
    text = (ROOT / "samconfig.toml").read_text()
    assert not re.search(r"(postgres|rediss?)://", text)
    assert not re.search(r"(?i)(password|secret|token)\s*=", text)


def test_deploy_refuses_placeholders(samconfig):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from check_samconfig import problems
    finally:
        sys.path.pop(0)
    assert problems(samconfig, "dev"), "the committed samconfig holds placeholders"
    filled = tomllib.loads((ROOT / "samconfig.toml").read_text().replace("REPLACE_ME", "x"))
    assert problems(filled, "dev") == []
    assert problems(filled, "qa")


def test_sam_cli_reads_the_configuration():
    from samcli.lib.config.samconfig import SamConfig

    config = SamConfig(str(ROOT), "samconfig.toml")
    for env in ENVIRONMENTS:
        assert config.get_all(["deploy"], "parameters", env)["stack_name"] == f"feature-flags-{env}"


def test_compose_services_match_the_local_urls():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    postgres = compose["services"]["postgres"]
    assert redis["image"] == "redis:7.2-alpine"
    assert postgres["image"] == "postgres:16-alpine"
    assert "127.0.0.1:6379:6379" in redis["ports"]
    assert "127.0.0.1:5432:5432" in postgres["ports"]
    env = postgres["environment"]
    # DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/flags
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == ("postgres", "postgres", "flags")
    for service in (redis, postgres):
        assert service["healthcheck"]["test"]


@pytest.mark.parametrize("command", ["build", "deploy"])
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_sam_cli_expands_the_route_loop_for_build_and_deploy(monkeypatch, env, command):
    # template.yaml's route functions are one Fn::ForEach loop: without local expansion (off by
    # default) `sam build` builds none of them and `sam deploy` uploads nothing for them. The
    # command is only parsed, with samconfig.toml read as SAM CLI reads it; nothing runs.
    monkeypatch.setenv("SAM_CLI_TELEMETRY", "0")
    monkeypatch.chdir(ROOT)
    if command == "build":
        from samcli.commands.build.command import cli
    else:
        from samcli.commands.deploy.command import cli
    context = cli.make_context(command, ["--config-env", env])
    assert context.params["language_extensions"] is True


class FakeLambdaClient:
    def __init__(self, payload: bytes, function_error: str | None = None):
        self.payload, self.function_error, self.calls = payload, function_error, []

    def invoke(self, FunctionName, Payload):
        self.calls.append((FunctionName, Payload))
        response = {"StatusCode": 200, "Payload": io.BytesIO(self.payload)}
        if self.function_error:
            response["FunctionError"] = self.function_error
        return response


def tools_module(name: str):
    """A script of tools/, imported as a module."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def invoke_migrate_module():
    return tools_module("invoke_migrate")


def test_make_deploy_invokes_the_environment_s_migrate_function(capsys):
    invoke_migrate = invoke_migrate_module()
    client = FakeLambdaClient(b'{"schemaVersion":3}')
    assert invoke_migrate.main(["invoke_migrate.py", "staging"], client) == 0
    assert client.calls == [("feature-flags-staging-migrate", b"{}")]
    assert '{"schemaVersion":3}' in capsys.readouterr().out


def test_failed_migrations_fail_make_deploy(capsys):
    invoke_migrate = invoke_migrate_module()
    client = FakeLambdaClient(b'{"errorType":"MigrationFailed","errorMessage":"no"}', "Unhandled")
    assert invoke_migrate.main(["invoke_migrate.py", "prod"], client) == 1
    assert "did not apply" in capsys.readouterr().err
    assert invoke_migrate.main(["invoke_migrate.py", "qa"], client) == 2


class FakeSsm:
    def __init__(self):
        self.calls = []

    def put_parameter(self, **kwargs):
        self.calls.append(kwargs)


POOL_JWKS = '{"keys": [{"kid": "k1", "kty": "RSA", "alg": "RS256", "e": "AQAB", "n": "xyz", "use": "sig"}]}'


def jwks_config(source: str) -> dict:
    overrides = f"Environment=prod CognitoUserPoolId=eu-west-1_AbC CognitoJwksSource={source}"
    return {"prod": {"deploy": {"parameters": {"parameter_overrides": overrides}}}}


def test_publish_jwks_copies_the_pool_s_jwks_into_the_environment_s_parameter(capsys):
    publish = tools_module("publish_jwks")
    ssm, fetched = FakeSsm(), []

    def get(url):
        fetched.append(url)
        return POOL_JWKS

    assert publish.main(["publish_jwks.py", "prod"], ssm, get, jwks_config("parameter")) == 0
    assert fetched == ["https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC/.well-known/jwks.json"]
    (call,) = ssm.calls
    assert (call["Name"], call["Type"], call["Overwrite"]) == ("/feature-flags/prod/cognito-jwks", "String", True)
    assert json.loads(call["Value"]) == json.loads(POOL_JWKS)
    assert "k1" in capsys.readouterr().out


@pytest.mark.parametrize("answer", ['{"keys": []}', "<html>gateway</html>", '{"keys": [{"kty": "RSA"}]}', OSError("refused")])
def test_publish_jwks_leaves_the_parameter_alone_when_the_jwks_is_unusable(capsys, answer):
    publish = tools_module("publish_jwks")
    ssm = FakeSsm()

    def get(url):
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert publish.main(["publish_jwks.py", "prod"], ssm, get, jwks_config("parameter")) == 1
    assert ssm.calls == []
    assert "could not publish" in capsys.readouterr().err


def test_publish_jwks_does_nothing_for_an_environment_that_fetches_from_the_pool(samconfig):
    publish = tools_module("publish_jwks")
    ssm = FakeSsm()

    def get(url):
        raise AssertionError("nothing to fetch")

    for env in ENVIRONMENTS:
        assert publish.main(["publish_jwks.py", env], ssm, get, samconfig) == 0
    assert publish.main(["publish_jwks.py", "prod"], ssm, get, jwks_config("endpoint")) == 0
    assert ssm.calls == []
    assert publish.main(["publish_jwks.py", "qa"], ssm, get, samconfig) == 2
