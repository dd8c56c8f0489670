"""Helpers for the infrastructure tests: in-process synthesis of the stack and lookups in its template.

Real CDK synthesis (aws-cdk-lib through jsii); nothing here talks to AWS. (A module with its own name: another test
folder has a conftest.py too, so `from conftest import ...` would be ambiguous.)
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

import aws_cdk as cdk  # noqa: E402  (after the path and the jsii setting above)
from aws_cdk.assertions import Template  # noqa: E402

from infra.settings import CONTEXT_KEY, Settings  # noqa: E402
from infra.stack import InferenceStack  # noqa: E402

STACK_ID = "TestInference"
COMPUTES = ("cpu", "gpu")
CLUSTER_MODES = ("persistent", "transient")
MAIN_VARIANTS = [(compute, mode) for compute in COMPUTES for mode in CLUSTER_MODES]


def cdk_json_context() -> dict[str, Any]:
    """The context of the real cdk.json: feature flags and the default settings the user deploys with."""
    return json.loads((REPO_ROOT / "cdk.json").read_text())["context"]


@dataclass
class Synthesized:
    app: cdk.App
    stack: InferenceStack
    template: Template

    @property
    def resources(self) -> dict[str, dict]:
        return self.template.to_json()["Resources"]

    def resources_of_type(self, resource_type: str) -> dict[str, dict]:
        return {name: body for name, body in self.resources.items() if body["Type"] == resource_type}

    def only(self, resource_type: str) -> tuple[str, dict]:
        found = self.resources_of_type(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
        return next(iter(found.items()))


def synthesize(staging_dir: Path, source_root: Path = REPO_ROOT, **setting_overrides: Any) -> Synthesized:
    context = cdk_json_context()
    context[CONTEXT_KEY] = {**context[CONTEXT_KEY], **setting_overrides}
    app = cdk.App(context=context)
    stack = InferenceStack(
        app,
        STACK_ID,
        settings=Settings.from_context(context[CONTEXT_KEY]),
        source_root=source_root,
        staging_dir=staging_dir,
    )
    return Synthesized(app=app, stack=stack, template=Template.from_stack(stack))


def logical_id(synthesized: Synthesized, construct) -> str:
    """The CloudFormation logical id of an L2 construct's main resource (or of an L1 resource)."""
    element = getattr(construct.node, "default_child", None) or construct
    return synthesized.stack.resolve(synthesized.stack.get_logical_id(element))


def role_statements(synthesized: Synthesized, role) -> list[dict]:
    """Every statement of the inline policies attached to ``role`` (an iam.IRole)."""
    role_id = logical_id(synthesized, role)
    statements = []
    for policy in synthesized.resources_of_type("AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return statements


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def deployment_resource(synthesized: Synthesized, deployment) -> dict:
    """The Custom::CDKBucketDeployment resource of a BucketDeployment (its child id carries the memory size)."""
    (child,) = [c for c in deployment.node.children if c.node.id.startswith("CustomResource-")]
    return synthesized.resources[logical_id(synthesized, child)]


def deploy_time_values_as_placeholders(resolved):
    """A resolved template fragment with each CloudFormation intrinsic ({"Ref": ...}, {"Fn::...": ...}) replaced by the
    placeholder the shipped JSON's markers are replaced with (see shipped_job_flow)."""
    if isinstance(resolved, dict):
        if len(resolved) == 1 and next(iter(resolved)).startswith(("Ref", "Fn::")):
            return "deploy-time value"
        return {key: deploy_time_values_as_placeholders(value) for key, value in resolved.items()}
    if isinstance(resolved, list):
        return [deploy_time_values_as_placeholders(value) for value in resolved]
    return resolved


def shipped_job_flow(synthesized: Synthesized, definition_name: str) -> dict:
    """The RunJobFlow JSON the artifacts deployment ships, read from the cloud assembly's asset directory, with each
    deploy-time value (a marker the deployment replaces with a quoted string) as "deploy-time value"."""
    assembly = synthesized.app.synth()
    deployment = deployment_resource(synthesized, synthesized.stack.artifacts.job_deployment)
    asset_dirs = [
        Path(assembly.directory) / f"asset.{key.removesuffix('.zip')}"
        for key in deployment["Properties"]["SourceObjectKeys"]
    ]
    (definition_file,) = [d / definition_name for d in asset_dirs if (d / definition_name).is_file()]
    return json.loads(re.sub(r"<<marker:0x[0-9a-f]+:\d+>>", '"deploy-time value"', definition_file.read_text()))
