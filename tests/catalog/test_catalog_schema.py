"""The predictions table in the synthesized template against what the real job writes: the same columns, in the same
order, with the Glue types of the Parquet types, and partition locations that are the runs' folders.

Real Spark, real MXNet, real Parquet, real CDK synthesis. What this cannot prove: how Athena's Parquet reader maps
these types (Trino's Hive connector; the mapping below is the Hive one Glue documents), and that Athena accepts the
projection properties (tests/infra/test_infra_catalog.py checks them as written).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import runs
from infra.catalog import PREDICTIONS_FOLDER, PREDICTIONS_TABLE, RUN_ID_COLUMN

pytestmark = pytest.mark.spark

# Arrow (as pyarrow reads Spark's Parquet) to Hive/Glue type names.
HIVE_TYPES = {
    pa.string(): "string",
    pa.int64(): "bigint",
    pa.int32(): "int",
    pa.int16(): "smallint",
    pa.int8(): "tinyint",
    pa.float32(): "float",
    pa.float64(): "double",
    pa.bool_(): "boolean",
    pa.binary(): "binary",
}


def hive_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_list(arrow_type):
        return f"array<{hive_type(arrow_type.value_type)}>"
    if pa.types.is_struct(arrow_type):
        return "struct<" + ",".join(f"{field.name}:{hive_type(field.type)}" for field in arrow_type) + ">"
    return HIVE_TYPES[arrow_type]


def visible_files(directory) -> list:
    """What Athena reads under a partition's location: every object except names starting with '_' or '.' (Hive's
    hidden files: Spark's _SUCCESS and its .crc checksums)."""
    return sorted(path for path in directory.rglob("*") if path.is_file() and not path.name.startswith(("_", ".")))


def table(synthesized) -> dict:
    """The predictions table's TableInput (the runs table is checked against the records in test_catalog_queries)."""
    (body,) = [body for body in synthesized.resources_of_type("AWS::Glue::Table").values()
               if body["Properties"]["TableInput"]["Name"] == PREDICTIONS_TABLE]
    return body["Properties"]["TableInput"]


def test_hive_type_names_the_job_output_types():
    top_k = pa.list_(pa.struct([("label", pa.int32()), ("probability", pa.float32())]))
    assert hive_type(top_k) == "array<struct<label:int,probability:float>>"


def test_table_columns_are_the_parquet_schema_of_a_real_run(job_results, synthesized):
    columns = [(column["Name"], column["Type"]) for column in table(synthesized)["StorageDescriptor"]["Columns"]]
    for run_id in job_results.run_ids:
        files = visible_files(job_results.run_dir(run_id) / "predictions")
        assert files, f"run {run_id} wrote no Parquet"
        for path in files:
            schema = pq.read_schema(path)
            assert [(field.name, hive_type(field.type)) for field in schema] == columns, path


def test_top_k_is_written_as_the_standard_parquet_list(job_results):
    """Athena's reader takes the three-level LIST layout Spark writes by default (writeLegacyFormat off)."""
    path = visible_files(job_results.run_dir(job_results.first_run_id) / "predictions")[0]
    paths = {column.path for column in pq.ParquetFile(path).schema}
    assert {"top_k.list.element.label", "top_k.list.element.probability"} <= paths


def test_partition_locations_are_the_runs_prediction_folders_and_hold_only_parquet(job_results, synthesized):
    properties = table(synthesized)
    assert [(key["Name"], key["Type"]) for key in properties["PartitionKeys"]] == [(RUN_ID_COLUMN, "string")]
    *_, location_suffix = properties["Parameters"]["storage.location.template"]["Fn::Join"][1]
    assert location_suffix.startswith("/")
    for run_id in job_results.run_ids:
        location = job_results.root / location_suffix[1:].replace(f"${{{RUN_ID_COLUMN}}}", run_id)
        assert location == job_results.run_dir(run_id) / PREDICTIONS_FOLDER.rstrip("/")
        # Each object Athena would read there is Parquet; summary.json and report.html are one level up.
        for path in visible_files(location):
            assert pq.read_metadata(path).num_rows > 0, path
        assert (job_results.run_dir(run_id) / "summary.json").exists()


def test_the_runs_queried_carry_the_triggers_own_ids_first_attempt_and_retry(job_results):
    """The ids come from trigger_function/runs.py: a time and random hex digits, '-2' for a second attempt. No
    enumerable range holds them, which is why the projection is injected (tests/infra/test_infra_catalog.py)."""
    first, retried = job_results.run_ids
    assert runs.parse_run_id(first) == (first, 1)
    batch_id, attempt = runs.parse_run_id(retried)
    assert (retried, attempt) == (f"{batch_id}-2", 2)
