"""Apply the database migrations of a deployed environment: invoke its migrate function.

Usage: .tools/sam/bin/python tools/invoke_migrate.py dev|staging|prod   (run by `make deploy`)

The function runs inside the VPC, so this works with the stack's default network (no NAT, no
internet gateway), where no machine outside can reach the database. The pre-traffic hook runs
the same function before it checks each new version; after the stack update this run covers a
new stack, whose first versions get no hook. Exits 1 when the migrations did not apply.
"""

from __future__ import annotations

import sys


def function_name(env: str) -> str:
    return f"feature-flags-{env}-migrate"


def main(argv: list[str], client=None) -> int:
    if len(argv) != 2 or argv[1] not in ("dev", "staging", "prod"):
        print(__doc__, file=sys.stderr)
        return 2
    name = function_name(argv[1])
    if client is None:
        import boto3  # from the SAM CLI's venv, which depends on it

        client = boto3.client("lambda")
    response = client.invoke(FunctionName=name, Payload=b"{}")
    payload = response["Payload"].read().decode("utf-8", "replace")
    if response.get("FunctionError"):
        print(f"{name}: the migrations did not apply: {payload}", file=sys.stderr)
        return 1
    print(f"{name}: migrations applied: {payload}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
