#!/usr/bin/env python3
"""CDK app entry: read the settings once (the `inference` object, and any setting given alone: `-c compute=gpu`), build
the stack, check it with cdk-nag, synthesize. No logic here."""

import sys
from pathlib import Path

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.settings import Settings, SettingsError
from infra.stack import InferenceStack

ROOT = Path(__file__).resolve().parent

app = cdk.App()
try:
    settings = Settings.from_cdk_context(app.node.get_all_context())
except SettingsError as error:
    sys.exit(f"error: {error}")
# The stack's name is a setting: deployments with different names live side by side in one account and region.
InferenceStack(
    app, settings.stack_name, settings=settings, source_root=ROOT, staging_dir=ROOT / "build" / "stack-artifacts"
)
# Synth fails on any AwsSolutions finding that is not acknowledged in code (each with its reason).
cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
app.synth()
