"""Refuse to deploy an environment whose samconfig.toml section still holds placeholders.

Usage: python3 tools/check_samconfig.py dev|staging|prod   (run by `make deploy`)
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PLACEHOLDER = "REPLACE_ME"


def problems(config: dict, env: str) -> list[str]:
    if env not in ("dev", "staging", "prod"):
        return [f"ENV must be dev, staging or prod (got {env!r})"]
    deploy = config.get(env, {}).get("deploy", {}).get("parameters")
    if not deploy:
        return [f"samconfig.toml has no [{env}.deploy.parameters] section"]
    found = []
    for key, value in deploy.items():
        if PLACEHOLDER in str(value):
            names = [p.split("=", 1)[0] for p in str(value).split() if PLACEHOLDER in p]
            found.append(f"[{env}.deploy.parameters] {key}: set {', '.join(names) or key}")
    return found


def main() -> int:
    env = sys.argv[1] if len(sys.argv) > 1 else ""
    config = tomllib.loads(Path("samconfig.toml").read_text())
    found = problems(config, env)
    for problem in found:
        print(f"samconfig.toml: {problem}", file=sys.stderr)
    if found:
        print(
            "Fill in the values for your account first (docs/deployment/first-deployment.md), "
            "or run `sam deploy --guided --config-env " + (env or "dev") + "` once.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
