"""template.yaml after expansion is the stack it described before the route loop (issue 13).

tests/template/expected/translated.json is the SAM translation of template.yaml as of commit
163a42e, the last one that spelled each route function out (no Fn::ForEach): every resource
SAM deploys, with all its properties, plus the parameters, conditions, rules and outputs,
as sorted JSON. The test expands today's template (scripts/expand_template.py), translates
it the same way (conftest.translate) and asserts that nothing was added, lost or changed.

`Mappings` are left out of the comparison: the route table lives there, and a mapping
creates nothing.

Regenerate the fixture only for an intended change of the deployed stack, in the same commit
as that change, and review its diff as carefully as the template's:
    .tools/sam/bin/python tests/template/test_expansion.py --write-fixture
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

from conftest import ROOT, TEMPLATE, expand_template

FIXTURE = Path(__file__).resolve().parent / "expected" / "translated.json"


def canonical(translated: dict) -> str:
    stack = {k: v for k, v in translated.items() if k != "Mappings"}
    return json.dumps(stack, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _diff(expected: dict, actual: dict) -> str:
    lines = []
    for section in sorted(set(expected) | set(actual)):
        if expected.get(section) == actual.get(section):
            continue
        if section != "Resources":
            lines.append(f"section {section} differs")
            continue
        old, new = expected.get(section, {}), actual.get(section, {})
        if set(old) - set(new):
            lines.append(f"lost: {sorted(set(old) - set(new))}")
        if set(new) - set(old):
            lines.append(f"added: {sorted(set(new) - set(old))}")
        for name in sorted(set(old) & set(new)):
            if old[name] != new[name]:
                a = json.dumps(old[name], indent=1, sort_keys=True).splitlines()
                b = json.dumps(new[name], indent=1, sort_keys=True).splitlines()
                lines.append(f"changed: {name}")
                lines.extend(list(difflib.unified_diff(a, b, "recorded", "expanded", lineterm=""))[:40])
    return "\n".join(lines)


def test_expanded_template_deploys_exactly_the_recorded_stack(transformed):
    expected = json.loads(FIXTURE.read_text())
    actual = json.loads(canonical(transformed))
    assert actual == expected, "the expanded template is not the recorded stack:\n" + _diff(expected, actual)


# --- what SAM CLI does with the loops (sam build / sam package --language-extensions) ----------

PSEUDO = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}


def functions_of(template: dict) -> dict:
    return {n: r for n, r in template["Resources"].items() if r.get("Type") == "AWS::Serverless::Function"}


def sam_cli_phase_one(source: dict):
    """SAM CLI's own expansion, as `sam build`/`sam package --language-extensions` run it."""
    from samcli.lib.cfn_language_extensions.sam_integration import expand_language_extensions

    return expand_language_extensions(copy.deepcopy(source), dict(PSEUDO), enabled=True)


def build_and_package(source: dict) -> dict:
    """sam build then sam package, offline, through SAM CLI 1.170's own merge code.

    Every function with a BuildMethod (the Rust functions, the hook's makefile) is "built" into
    its own artifact directory (named after it, as `sam build` does), the built template is written back with its loops (BuildContext), then
    "packaged": each artifact becomes s3://bucket/<directory>.zip and the URIs are merged back
    into the loops (language_extensions_packaging). Returns the packaged template, the one
    `sam deploy` hands to CloudFormation.
    """
    from samcli.commands.build.build_context import BuildContext
    from samcli.lib.package.language_extensions_packaging import (
        generate_and_apply_artifact_mappings,
        merge_language_extensions_s3_uris,
    )

    phase1 = sam_cli_phase_one(source)
    modified = copy.deepcopy(phase1.expanded_template)
    artifacts = {}
    for name, function in functions_of(modified).items():
        if function.get("Metadata", {}).get("BuildMethod") in ("rust-cargolambda", "makefile"):
            function["Properties"]["CodeUri"] = name
            artifacts[name] = f".aws-sam/build/{name}"
    stack = types.SimpleNamespace(
        original_template_dict=phase1.original_template, parameters={}, stack_path="", location="template.yaml"
    )
    built = BuildContext._get_template_for_output(BuildContext.__new__(BuildContext), stack, modified, artifacts)
    built = json.loads(json.dumps(built))

    result = sam_cli_phase_one(built)
    exported = copy.deepcopy(result.expanded_template)
    for function in functions_of(exported).values():
        if isinstance(function["Properties"].get("CodeUri"), str):
            function["Properties"]["CodeUri"] = f"s3://bucket/{function['Properties']['CodeUri']}.zip"
    packaged = merge_language_extensions_s3_uris(result.original_template, exported, result.dynamic_artifact_properties)
    if result.dynamic_artifact_properties:
        packaged = generate_and_apply_artifact_mappings(
            packaged, result.dynamic_artifact_properties, exported["Resources"], "."
        )
    return {"built": built, "packaged": packaged}


def deployed_code(packaged: dict) -> dict:
    """Function -> CodeUri once CloudFormation has expanded the packaged template."""
    expanded = expand_template.expand(packaged)
    return {n: f["Properties"].get("CodeUri") for n, f in functions_of(expanded).items()}


def test_sam_build_sees_the_functions_the_tests_see(source_template, template):
    """`sam build --language-extensions` builds what the expanded template declares.

    SAM CLI's phase 1 also resolves parameters to their defaults (so its view is not compared
    whole), but the build inputs of every function must be the same: logical id, build
    method and binary, CodeUri, and the route of its event.
    """
    theirs, ours = functions_of(sam_cli_phase_one(source_template).expanded_template), functions_of(template)
    assert set(theirs) == set(ours)
    for name, function in ours.items():
        assert theirs[name].get("Metadata", {}).get("BuildMethod") == function.get("Metadata", {}).get("BuildMethod"), name
        assert theirs[name].get("Metadata", {}).get("BuildProperties") == function.get("Metadata", {}).get(
            "BuildProperties"
        ), name
        assert theirs[name]["Properties"].get("CodeUri") == function["Properties"].get("CodeUri"), name
        for event, spec in function["Properties"].get("Events", {}).items():
            other = theirs[name]["Properties"]["Events"][event]["Properties"]
            assert (other["Method"], other["Path"]) == (spec["Properties"]["Method"], spec["Properties"]["Path"])


def test_build_and_package_give_every_route_its_own_binary(source_template, template):
    """Each route deploys the artifact built from its own binary, not the first route's.

    SAM CLI writes the loops back into the built and packaged templates; for an artifact
    property that does not depend on the loop variable it copies the *first* iteration's
    artifact onto the whole loop (aws/aws-sam-cli#9117). CodeUri is therefore a lookup keyed
    by the route (always "."), which SAM CLI turns into one artifact per route. The second half
    shows what a constant `CodeUri: .` would deploy: get-flags behind every route.
    """
    rust = {n for n, f in functions_of(template).items() if f.get("Metadata", {}).get("BuildMethod") == "rust-cargolambda"}
    assert len(rust) == 21  # 18 routes, not-found ($default), the scheduled applier, migrate
    code = deployed_code(build_and_package(source_template)["packaged"])
    assert {n: code[n] for n in rust} == {n: f"s3://bucket/{n}.zip" for n in rust}

    constant = json.loads(json.dumps(source_template))
    constant["Resources"]["Fn::ForEach::Routes"][2]["${Route}Function"]["Properties"]["CodeUri"] = "."
    code = deployed_code(build_and_package(constant)["packaged"])
    looped = rust - {"ApplySchedulesFunction", "MigrateFunction"}
    assert {code[n] for n in looped} == {"s3://bucket/GetFlagsFunction.zip"}


def test_start_api_template_declares_the_local_urls_on_every_rust_function(source_template):
    """`make start-api` expands the built template before tools/sam_local_template.py reads it."""
    spec = importlib.util.spec_from_file_location("sam_local_template", ROOT / "tools" / "sam_local_template.py")
    sam_local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sam_local)
    local = expand_template.expand(build_and_package(source_template)["built"])
    # Every Rust function, the I/O-free ones (not-found, openapi) included: they read neither
    # URL, and the declarations cost nothing.
    assert sam_local.localize(local) == 21
    for name, function in functions_of(local).items():
        if function["Properties"].get("Runtime", "provided.al2023") == "provided.al2023":
            assert function["Properties"]["CodeUri"] == name  # its own build directory
            assert {"DATABASE_URL", "REDIS_URL"} <= set(function["Properties"]["Environment"]["Variables"])


def test_cfn_lint_expands_the_loops_like_sam_cli(source_template, template):
    """cfn-lint's own Fn::ForEach expansion (what `cfn-lint` and `sam validate --lint` lint)
    gives the same resources as SAM CLI's, once both have the same lookups resolved."""
    from cfnlint.template import Template
    from cfnlint.template.transforms._language_extensions import language_extension

    matches, expanded = language_extension(Template(str(TEMPLATE), copy.deepcopy(source_template), ["eu-west-1"]))
    assert not matches, matches
    theirs = expand_template.resolve_lookups(json.loads(json.dumps(expanded)))
    assert theirs["Resources"] == template["Resources"]


def test_checkov_copy_is_the_expanded_template(tmp_path, template):
    """The file `make checkov-template` scans (and lints) is the expanded template, whose
    functions keep their checkov suppressions."""
    target = tmp_path / "template.expanded.json"
    assert expand_template.main(["expand_template.py", str(TEMPLATE), str(target)]) == 0
    assert json.loads(target.read_text()) == json.loads(json.dumps(template))
    for name, function in functions_of(template).items():
        if function.get("Metadata", {}).get("BuildMethod") == "rust-cargolambda":
            skipped = {s["id"] for s in function["Metadata"]["checkov"]["skip"]}
            assert skipped == {"CKV_AWS_115", "CKV_AWS_116"}, name


def test_sam_build_ships_the_hook_file_as_it_is(tmp_path):
    """`sam build` of the pre-traffic hook (BuildMethod: makefile) copies its index.py, offline
    and without the function's Python version on the building machine."""
    sam = Path(sys.executable).parent / "sam"
    build_dir = tmp_path / "build"
    subprocess.run(
        [str(sam), "build", "PreTrafficHookFunction", "--language-extensions",
         "--template", str(TEMPLATE), "--build-dir", str(build_dir)],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
    )
    shipped = build_dir / "PreTrafficHookFunction" / "index.py"
    assert shipped.read_bytes() == (ROOT / "infra" / "pre-traffic-hook" / "index.py").read_bytes()
    assert sorted(p.name for p in shipped.parent.iterdir()) == ["index.py"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-fixture"]:
        sys.exit(__doc__)
    import conftest  # this file's directory is on sys.path when it runs as a script

    translated = conftest.translate(conftest.expand_template.expand(conftest.load(conftest.TEMPLATE)))
    FIXTURE.write_text(canonical(translated))
    print(f"{FIXTURE}: {len(translated['Resources'])} resources")
