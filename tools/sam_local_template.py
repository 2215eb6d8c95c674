"""Write the template that `make start-api` gives to `sam local start-api`.

`sam local` passes a function only the environment variables its template declares, and the
deployed template declares none of DATABASE_URL / REDIS_URL (in AWS the URLs come from SSM).
This script copies the template built by `sam build` and declares both variables (and the
migrate function's MIGRATION_DATABASE_URL) on every Rust function, so that
tools/sam-local-env.json can point them at the docker-compose services and empty the
*_SSM_PARAMETER names. The deployed template is left untouched.

The I/O-free functions (not-found, openapi) get both too, like their SSM parameter names from
the Globals: they read neither, so the declarations cost nothing and need no list of them here.

Usage: python tools/sam_local_template.py .aws-sam/build/template.yaml .aws-sam/build/template.local.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from samcli.yamlhelper import yaml_dump, yaml_parse

LOCAL_ONLY = ("DATABASE_URL", "REDIS_URL", "MIGRATION_DATABASE_URL")


def localize(template: dict) -> int:
    count = 0
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") not in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
            continue
        properties = resource.setdefault("Properties", {})
        if properties.get("Runtime", template.get("Globals", {}).get("Function", {}).get("Runtime")) != "provided.al2023":
            continue  # the Python pre-traffic hook
        variables = properties.setdefault("Environment", {}).setdefault("Variables", {})
        for name in LOCAL_ONLY:
            variables.setdefault(name, "")
        count += 1
    return count


def main(source: str, target: str) -> None:
    template = yaml_parse(Path(source).read_text())
    count = localize(template)
    if count == 0:
        sys.exit(f"{source}: no Rust function found")
    Path(target).write_text(yaml_dump(template))
    print(f"{target}: DATABASE_URL and REDIS_URL declared on {count} functions (local use only)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
