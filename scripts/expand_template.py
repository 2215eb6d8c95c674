"""Expand the AWS::LanguageExtensions constructs of template.yaml offline (issue 13).

template.yaml declares `Transform: [AWS::LanguageExtensions, AWS::Serverless-2016-10-31]` and
writes the 16 HTTP route functions once, as an `Fn::ForEach` loop over a route table. The SAM
translator, checkov and the template tests need the resources as CloudFormation will see them
after the AWS::LanguageExtensions transform, so this module expands the template the same way:

1. `Fn::ForEach` is expanded by SAM CLI's own processor (samcli.lib.cfn_language_extensions,
   the code `sam build` / `sam package --language-extensions` run), with SAM CLI's
   `Fn::FindInMap` resolver for the loop collections and the route-table lookups.
2. Then the template-time evaluations that the transform performs before the SAM transform,
   and nothing more: `Fn::FindInMap` with literal keys (and its DefaultValue) and
   `Fn::Select` with a literal index, both with SAM CLI's resolvers; `Fn::Sub` variables whose
   value is a literal string inlined (a `Fn::Sub` left without variables is that string);
   `Ref: AWS::NoValue` removed where it is a property value or a list item. The mappings that
   only the loops read (the route table) are dropped, and so is the transform's name.

Why not SAM CLI's whole phase-1 pipeline (`expand_language_extensions`)? It also resolves every
`Ref` to a parameter with its *default* (LogRetentionDays becomes 30), evaluates conditions
with those defaults and strips `Fn::Sub` from partly resolved strings: right for choosing what
`sam build` builds, wrong for describing the stack CloudFormation deploys for any parameter
values. The tests still run that pipeline, to check that `sam build` sees the same functions.

A template without AWS::LanguageExtensions is returned unchanged (a copy).

Usage (from the repository root, with the .tools/sam venv that has SAM CLI and cfn-lint):
    .tools/sam/bin/python scripts/expand_template.py template.yaml target/infra/template.expanded.json
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

LANGUAGE_EXTENSIONS = "AWS::LanguageExtensions"
NO_VALUE = {"Ref": "AWS::NoValue"}
# ${Name} in a Fn::Sub string; ${!Name} is a literal "${Name}", not a variable.
SUB_VARIABLE = re.compile(r"\$\{(?!!)([^}]*)\}")


def transforms_of(template: dict) -> list:
    declared = template.get("Transform", [])
    return list(declared) if isinstance(declared, list) else [declared]


def uses_language_extensions(template: dict) -> bool:
    return LANGUAGE_EXTENSIONS in transforms_of(template)


def expand(template: dict) -> dict:
    """The template as CloudFormation's AWS::LanguageExtensions transform hands it on."""
    if not uses_language_extensions(template):
        return copy.deepcopy(template)

    # Imported here so that a template without the transform needs no SAM CLI.
    from samcli.lib.cfn_language_extensions.processors import ForEachProcessor

    context, lookups = _context(json.loads(json.dumps(template)))  # plain dicts, lists, strings
    ForEachProcessor(intrinsic_resolver=lookups).process_template(context)
    return resolve_lookups(context.fragment)


def resolve_lookups(expanded: dict) -> dict:
    """Step 2 on a template whose loops are already expanded (by SAM CLI or by cfn-lint)."""
    _, lookups = _context(expanded)
    for section in ("Conditions", "Resources", "Outputs"):
        if section in expanded:
            expanded[section] = normalize(lookups.resolve_value(expanded[section]))
    # The loops' lookup tables (the route table) are consumed: keep only the mappings that a
    # remaining Fn::FindInMap still reads (cfn-lint W7001 flags an unused one).
    used: set = set()
    _collect_mapping_names(expanded, used)
    mappings = {name: m for name, m in expanded.get("Mappings", {}).items() if name in used}
    if mappings:
        expanded["Mappings"] = mappings
    else:
        expanded.pop("Mappings", None)
    remaining = [t for t in transforms_of(expanded) if t != LANGUAGE_EXTENSIONS]
    if remaining:
        expanded["Transform"] = remaining[0] if len(remaining) == 1 else remaining
    else:
        expanded.pop("Transform", None)
    return expanded


def _context(fragment: dict):
    """A SAM CLI processing context whose resolver evaluates Fn::FindInMap and Fn::Select only."""
    from samcli.lib.cfn_language_extensions.models import ResolutionMode, TemplateProcessingContext
    from samcli.lib.cfn_language_extensions.processors import TemplateParsingProcessor
    from samcli.lib.cfn_language_extensions.resolvers import (
        FnFindInMapResolver,
        FnSelectResolver,
        IntrinsicResolver,
    )

    context = TemplateProcessingContext(fragment=fragment, parameter_values={}, resolution_mode=ResolutionMode.PARTIAL)
    TemplateParsingProcessor().process_template(context)
    lookups = IntrinsicResolver(context).register_resolver(FnFindInMapResolver).register_resolver(FnSelectResolver)
    return context, lookups


def _collect_mapping_names(value: Any, names: set) -> None:
    if isinstance(value, dict):
        for key, val in value.items():
            if key == "Fn::FindInMap" and isinstance(val, list) and val and isinstance(val[0], str):
                names.add(val[0])
            if key != "Mappings":
                _collect_mapping_names(val, names)
    elif isinstance(value, list):
        for val in value:
            _collect_mapping_names(val, names)


def normalize(value: Any) -> Any:
    """Fn::Sub literal variables inlined, AWS::NoValue removed (bottom-up)."""
    if isinstance(value, list):
        return [normalize(v) for v in value if v != NO_VALUE]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (key, args), = value.items()
        if key == "Fn::Sub":
            return _sub(normalize(args))
        if key.startswith("Fn::") or key in ("Ref", "Condition"):
            # Arguments of an intrinsic keep their AWS::NoValue (e.g. in a Fn::If branch).
            return {key: _normalize_args(args)}
    return {k: normalize(v) for k, v in value.items() if v != NO_VALUE}


def _normalize_args(args: Any) -> Any:
    if isinstance(args, list):
        return [a if a == NO_VALUE else normalize(a) for a in args]
    return normalize(args)


def _sub(args: Any) -> Any:
    if isinstance(args, list) and len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], dict):
        text, variables = args
        kept = {}
        for name, val in variables.items():
            if isinstance(val, str):
                if "${" in val:
                    raise ValueError(f"Fn::Sub variable {name}={val!r} would be read as a template")
                text = text.replace("${" + name + "}", val)
            else:
                kept[name] = val
        args = [text, kept] if kept else text
    if isinstance(args, str) and not SUB_VARIABLE.search(args) and "${!" not in args:
        return args
    return {"Fn::Sub": args}


def load(path: Path) -> dict:
    from cfnlint.decode import decode

    template, errors = decode(str(path))
    if errors:
        raise SystemExit(f"{path} does not parse: {errors}")
    return json.loads(json.dumps(template))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = Path(argv[1]), Path(argv[2])
    expanded = expand(load(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(expanded, indent=2) + "\n")
    count = len(expanded.get("Resources", {}))
    print(f"{target}: {source} with its language extensions expanded ({count} resources)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
