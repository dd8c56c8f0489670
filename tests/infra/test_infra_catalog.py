"""The results catalog in the template: the predictions table's partition projection, the Athena workgroup's enforced
settings, the saved queries, and the reader policy.

These check what DuckDB (tests/catalog) cannot: the Glue table properties Athena reads for partition projection, the
Hive/Parquet storage classes, and that every saved query names its runs the way an injected partition requires. What a
template cannot prove: that Athena accepts them (no AWS here), and what IAM grants when it evaluates the reader policy.
The table's columns are compared with a real run's Parquet schema in tests/catalog.
"""

from __future__ import annotations

import re

import pytest
from infra_helpers import STACK_ID, as_list, logical_id

from infra.catalog import PREDICTIONS_TABLE, RUN_COLUMNS, RUN_ID_COLUMN, RUNS_TABLE, SAVED_QUERIES, database_name
from infra.storage import QUERY_RESULTS_EXPIRATION_DAYS

# What an injected partition requires of a query: a static equality (or IN list of literals) on the column.
RUN_ID_CONSTRAINT = re.compile(rf"WHERE {RUN_ID_COLUMN} (= '[^']+'|IN \('[^']+'(, '[^']+')*\))")


def data_bucket_url(variant, key: str) -> dict:
    return {"Fn::Join": ["", ["s3://", {"Ref": logical_id(variant, variant.stack.storage.data_bucket)}, key]]}


def table_input(variant, table=None) -> dict:
    """The TableInput of the predictions table (or of ``table``, a glue.S3Table of the catalog)."""
    table = table or variant.stack.catalog.table
    return variant.resources[logical_id(variant, table)]["Properties"]["TableInput"]


def test_run_id_partition_is_projected_from_the_query_without_a_crawler(variant):
    parameters = table_input(variant)["Parameters"]
    assert parameters["projection.enabled"] == "true"
    assert parameters[f"projection.{RUN_ID_COLUMN}.type"] == "injected"
    assert parameters["storage.location.template"] == data_bucket_url(
        variant, f"/results/${{{RUN_ID_COLUMN}}}/predictions/"
    )
    assert table_input(variant)["PartitionKeys"] == [{"Name": RUN_ID_COLUMN, "Type": "string"}]
    assert not variant.resources_of_type("AWS::Glue::Crawler")
    assert not variant.resources_of_type("AWS::Glue::Partition")


def test_table_reads_parquet_under_results(variant):
    table = table_input(variant)
    storage = table["StorageDescriptor"]
    assert (table["Name"], table["TableType"]) == (PREDICTIONS_TABLE, "EXTERNAL_TABLE")
    assert storage["Location"] == data_bucket_url(variant, "/results/")
    assert storage["SerdeInfo"]["SerializationLibrary"] == "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    assert storage["InputFormat"] == "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    # SSE-S3 objects: S3 decrypts them; true would tell Athena they are client-side encrypted.
    assert table["Parameters"]["has_encrypted_data"] is False


def test_database_is_named_for_athena_after_the_stack(variant):
    _, database = variant.only("AWS::Glue::Database")
    assert database["Properties"]["DatabaseInput"]["Name"] == f"{STACK_ID.lower()}_results"
    tables = variant.resources_of_type("AWS::Glue::Table").values()
    assert sorted(table["Properties"]["TableInput"]["Name"] for table in tables) == [PREDICTIONS_TABLE, RUNS_TABLE]
    for table in tables:
        assert table["Properties"]["DatabaseName"] == {"Ref": logical_id(variant, variant.stack.catalog.database)}


def test_runs_table_reads_one_json_record_per_run_under_runs(variant):
    """Athena reads every object under a table's location: runs/ holds only the jobs' records (one per run, no
    partitions), not results/, which holds reports and Parquet too."""
    table = table_input(variant, variant.stack.catalog.runs_table)
    storage = table["StorageDescriptor"]
    assert (table["Name"], table["TableType"]) == (RUNS_TABLE, "EXTERNAL_TABLE")
    assert storage["Location"] == data_bucket_url(variant, "/runs/")
    assert storage["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
    assert storage["InputFormat"] == "org.apache.hadoop.mapred.TextInputFormat"
    assert [column["Name"] for column in storage["Columns"]] == [name for name, _ in RUN_COLUMNS]
    assert "PartitionKeys" not in table or not table["PartitionKeys"]


@pytest.mark.parametrize(
    "stack_name, expected",
    [("MxnetSparkInference", "mxnetsparkinference_results"), ("My-Stack-2", "my_stack_2_results")],
)
def test_database_name_needs_no_quoting_in_athena(stack_name, expected):
    assert database_name(stack_name) == expected


def workgroup(variant) -> dict:
    _, body = variant.only("AWS::Athena::WorkGroup")
    return body["Properties"]


def test_workgroup_enforces_encrypted_results_in_its_own_prefix(variant):
    properties = workgroup(variant)
    configuration = properties["WorkGroupConfiguration"]
    assert properties["Name"] == f"{STACK_ID}-results"
    assert configuration["EnforceWorkGroupConfiguration"] is True
    assert configuration["ResultConfiguration"] == {
        "OutputLocation": data_bucket_url(variant, "/query-results/"),
        "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"},
    }
    assert configuration["EngineVersion"] == {"SelectedEngineVersion": "Athena engine version 3"}
    assert configuration["PublishCloudWatchMetricsEnabled"] is True
    # Users save their own queries in it; destroy must still delete it.
    assert properties["RecursiveDeleteOption"] is True


@pytest.mark.parametrize("limit_gb", [1, 10, 250])
def test_bytes_scanned_per_query_follow_the_setting(synth, limit_gb):
    configuration = workgroup(synth(athena_scan_limit_gb=limit_gb))["WorkGroupConfiguration"]
    assert configuration["BytesScannedCutoffPerQuery"] == limit_gb * 10**9


def test_default_scan_limit_is_above_athenas_minimum(variant):
    assert workgroup(variant)["WorkGroupConfiguration"]["BytesScannedCutoffPerQuery"] >= 10_000_000


def test_query_results_expire_with_athenas_history(variant):
    bucket = variant.resources[logical_id(variant, variant.stack.storage.data_bucket)]["Properties"]
    rules = [rule for rule in bucket["LifecycleConfiguration"]["Rules"] if rule.get("Prefix") == "query-results/"]
    assert rules == [
        {"Id": "expire-query-results", "Prefix": "query-results/", "ExpirationInDays": QUERY_RESULTS_EXPIRATION_DAYS,
         "Status": "Enabled"}
    ]  # fmt: skip


def saved_queries(variant) -> dict[str, dict]:
    return {
        body["Properties"]["Name"]: body["Properties"]
        for body in variant.resources_of_type("AWS::Athena::NamedQuery").values()
    }


def test_the_saved_queries_in_the_workgroup_and_database(variant):
    queries = saved_queries(variant)
    assert sorted(queries) == [
        "lowest-confidence images across runs", "per-class counts for one run", "runs from one upload prefix"
    ]  # fmt: skip
    for query in queries.values():
        assert query["WorkGroup"] == {"Ref": logical_id(variant, variant.stack.catalog.workgroup)}
        assert query["Database"] == {"Ref": logical_id(variant, variant.stack.catalog.database)}


PREDICTIONS_QUERIES = [query for query in SAVED_QUERIES if f"FROM {PREDICTIONS_TABLE}\n" in query.sql]


def test_every_saved_query_reads_the_predictions_or_the_unpartitioned_runs_table():
    assert len(PREDICTIONS_QUERIES) == 2
    for query in SAVED_QUERIES:
        assert query in PREDICTIONS_QUERIES or f"FROM {RUNS_TABLE}\n" in query.sql, query.sql


@pytest.mark.parametrize("query", PREDICTIONS_QUERIES, ids=[query.name for query in PREDICTIONS_QUERIES])
def test_every_predictions_query_names_its_runs_as_an_injected_partition_requires(query):
    """Athena refuses a query on an injected partition without static equality conditions on it (CONSTRAINT_VIOLATION);
    DuckDB has no such rule, so it is checked here."""
    assert RUN_ID_CONSTRAINT.search(query.sql), query.sql


def test_the_constraint_check_refuses_a_query_without_static_run_ids():
    assert not RUN_ID_CONSTRAINT.search("SELECT * FROM predictions WHERE status = 'ok'")
    assert not RUN_ID_CONSTRAINT.search("SELECT * FROM predictions WHERE run_id LIKE '2026%'")


def reader_statements(variant) -> dict[str, dict]:
    policy = variant.resources[logical_id(variant, variant.stack.catalog.reader_policy)]
    return {statement["Sid"]: statement for statement in policy["Properties"]["PolicyDocument"]["Statement"]}


def joined(value) -> str:
    """An ARN built with Fn::Join as text, references shown as <logical id> or <pseudo parameter>."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return f"<{'.'.join(value['Fn::GetAtt'])}>"
    return "".join(joined(part) for part in value["Fn::Join"][1])


def test_reader_policy_queries_only_the_stacks_workgroup_and_table(variant):
    statements = reader_statements(variant)
    workgroup_id = logical_id(variant, variant.stack.catalog.workgroup)
    athena = statements["QueryInTheResultsWorkgroup"]
    assert joined(athena["Resource"]).endswith(f":workgroup/<{workgroup_id}>")
    assert all(action.startswith("athena:") and "Create" not in action and "Delete" not in action
               for action in as_list(athena["Action"]))  # fmt: skip
    glue = statements["ReadTheResultsTables"]
    assert sorted(as_list(glue["Action"])) == ["glue:GetDatabase", "glue:GetTable", "glue:GetTables"]
    database = database_name(STACK_ID)
    assert sorted(joined(arn).rsplit(":", 1)[1] for arn in glue["Resource"]) == [
        "catalog", f"database/{database}", f"table/{database}/*"
    ]  # fmt: skip


def test_reader_policy_reads_results_and_writes_only_query_results(variant):
    statements = reader_statements(variant)
    bucket = logical_id(variant, variant.stack.storage.data_bucket)
    assert statements["ReadRunResults"]["Action"] == "s3:GetObject"
    assert [joined(arn) for arn in statements["ReadRunResults"]["Resource"]] == [
        f"<{bucket}.Arn>/results/*", f"<{bucket}.Arn>/runs/*"
    ]  # fmt: skip
    writes = [s for s in statements.values() if {"s3:PutObject"} & set(as_list(s["Action"]))]
    assert [joined(s["Resource"]) for s in writes] == [f"<{bucket}.Arn>/query-results/*"]
    listing = statements["ListRunResultsAndQueryResults"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["results/*", "runs/*", "query-results/*"]}}
    every_action = {action for s in statements.values() for action in as_list(s["Action"])}
    assert not {action for action in every_action if action.startswith(("kms:", "iam:", "emr", "elasticmapreduce:"))}


def test_reader_policy_is_an_output_attached_to_no_one(variant):
    policy_id = logical_id(variant, variant.stack.catalog.reader_policy)
    properties = variant.resources[policy_id]["Properties"]
    assert not {"Roles", "Users", "Groups"} & set(properties)
    outputs = variant.template.to_json()["Outputs"]
    assert outputs["ResultsReaderPolicyArn"]["Value"] == {"Ref": policy_id}
    assert outputs["ResultsWorkgroup"]["Value"] == {"Ref": logical_id(variant, variant.stack.catalog.workgroup)}


def test_catalog_and_workgroup_go_with_the_stack_even_when_data_is_retained(synth):
    """Their names derive from the stack's: kept, they would make the next deploy of the same stack fail."""
    variant = synth(retain_data_on_destroy=True)
    for resource_type in ("AWS::Glue::Database", "AWS::Glue::Table", "AWS::Athena::WorkGroup"):
        bodies = variant.resources_of_type(resource_type).values()
        assert bodies and all(body.get("DeletionPolicy", "Delete") == "Delete" for body in bodies)
