"""Publish the Cognito user pool's JWKS in SSM for an environment that reads it from there.

Usage: .tools/sam/bin/python tools/publish_jwks.py dev|staging|prod   (run by `make deploy`;
`make publish-jwks ENV=...` after a key rotation)

A user pool with a domain does not serve its JWKS through the cognito-idp VPC endpoint, and the
functions have no other way out of the VPC. With CognitoJwksSource=parameter in the
environment's samconfig.toml section, this copies the pool's public JWKS (fetched from this
machine) into the String parameter /feature-flags/<env>/cognito-jwks, which the functions read
at start and again when a token names a key their copy lacks. With the default
(CognitoJwksSource=endpoint) it does nothing. Exits 1 when the JWKS cannot be fetched or holds
no key; the parameter is then left as it was.
"""

from __future__ import annotations

import json
import shlex
import sys
import tomllib
import urllib.request
from pathlib import Path

ENVIRONMENTS = ("dev", "staging", "prod")


def parameter_name(env: str) -> str:
    return f"/feature-flags/{env}/cognito-jwks"


def jwks_url(user_pool_id: str) -> str:
    region = user_pool_id.split("_", 1)[0]
    return f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}/.well-known/jwks.json"


def deploy_overrides(config: dict, env: str) -> dict:
    section = config.get(env, {}).get("deploy", {}).get("parameters", {})
    return dict(item.split("=", 1) for item in shlex.split(section.get("parameter_overrides", "")))


def checked_jwks(text: str) -> str:
    """The document as compact JSON, refused unless every key has a key id and a key type."""
    document = json.loads(text)
    keys = document.get("keys") if isinstance(document, dict) else None
    if not keys or not all(isinstance(k, dict) and k.get("kid") and k.get("kty") for k in keys):
        raise ValueError("not a JWKS with keys")
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (a fixed https URL)
        return response.read().decode("utf-8")


def main(argv: list[str], ssm=None, get=fetch, config: dict | None = None) -> int:
    if len(argv) != 2 or argv[1] not in ENVIRONMENTS:
        print(__doc__, file=sys.stderr)
        return 2
    env = argv[1]
    if config is None:
        config = tomllib.loads(Path("samconfig.toml").read_text())
    overrides = deploy_overrides(config, env)
    if overrides.get("CognitoJwksSource", "endpoint") != "parameter":
        print(f"{env}: the functions fetch the JWKS from the pool (CognitoJwksSource=endpoint)")
        return 0
    pool = overrides.get("CognitoUserPoolId", "")
    url = jwks_url(pool)
    try:
        document = checked_jwks(get(url))
    except (OSError, ValueError) as error:
        print(f"{env}: could not publish the JWKS of {pool} ({url}): {error}", file=sys.stderr)
        return 1
    if ssm is None:
        import boto3  # from the SAM CLI's venv, which depends on it

        ssm = boto3.client("ssm")  # the stack's region, as `sam deploy` picks it
    name = parameter_name(env)
    ssm.put_parameter(Name=name, Value=document, Type="String", Overwrite=True)
    kids = ", ".join(key["kid"] for key in json.loads(document)["keys"])
    print(f"{env}: {name} holds the JWKS of {pool} (key ids: {kids})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
