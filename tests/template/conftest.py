"""Shared loaders for the template tests.

The templates are read with cfn-lint's CloudFormation-aware decoder (it understands the
short-form tags !Ref, !Sub, !GetAtt, ... and returns their long form, e.g. {"Ref": "X"}).
template.yaml uses the AWS::LanguageExtensions transform (its route functions are one
Fn::ForEach loop over a route table), so the `template` every test sees is the *expanded*
template (scripts/expand_template.py: SAM CLI's Fn::ForEach processor plus the template-time
lookups of the transform). It is also translated to plain CloudFormation with the SAM
translator (offline: no AWS call, no credentials), so the tests can check what CloudFormation
will really get. `source_template` is the file as written, loops and all.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
BILLING_TEMPLATE = ROOT / "infra" / "billing-us-east-1.yaml"

_spec = importlib.util.spec_from_file_location("expand_template", ROOT / "scripts" / "expand_template.py")
expand_template = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(expand_template)


def load(path: Path) -> dict:
    template, errors = decode(str(path))
    assert not errors, f"{path} does not parse: {errors}"
    return template


@pytest.fixture(scope="session")
def source_template() -> dict:
    """template.yaml as written (Fn::ForEach loops, route table in Mappings)."""
    return load(TEMPLATE)


@pytest.fixture(scope="session")
def template(source_template) -> dict:
    """template.yaml after the AWS::LanguageExtensions expansion: every resource it deploys."""
    return expand_template.expand(source_template)


@pytest.fixture(scope="session")
def resources(template) -> dict:
    return template["Resources"]


@pytest.fixture(scope="session")
def billing_template() -> dict:
    return load(BILLING_TEMPLATE)


class _NoManagedPolicies:
    """The template names no AWS managed policy by name, so the translator needs no map."""

    def load(self) -> dict:
        return {}


def translate(template: dict, parameters: dict | None = None) -> dict:
    """The SAM translation of an (expanded) template, as `sam validate` would do it.

    `parameters` are stack parameter values, as CloudFormation hands them to the transform
    (a CommaDelimitedList as a list); the others keep their defaults.
    """
    from samtranslator.translator.transform import transform

    sam = copy.deepcopy(template)
    # As `sam validate` does: a local CodeUri becomes an S3 location before translation.
    for resource in sam["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function" and "CodeUri" in resource["Properties"]:
            resource["Properties"]["CodeUri"] = "s3://example-bucket/code.zip"
    previous = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = "eu-west-1"
    try:
        return transform(
            sam,
            {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws", **(parameters or {})},
            _NoManagedPolicies(),
        )
    finally:
        if previous is None:
            del os.environ["AWS_DEFAULT_REGION"]
        else:
            os.environ["AWS_DEFAULT_REGION"] = previous


@pytest.fixture(scope="session")
def transformed(template) -> dict:
    return translate(template)
