"""The documented example queries (docs/job.md) (the stack's saved queries) on a real SQL engine over real job output.

DuckDB reads the Parquet the job wrote under ``results/<run id>/predictions/``, as Athena would through the table:
every visible object under each run's location, the run id taken from the folder, the table's columns in its order.
Both are SQL over Parquet, and the queries use only what Trino (Athena's engine) and DuckDB share. The runs table is
every record under ``runs/`` read as newline-delimited JSON with the Glue table's columns and types (``source`` a
struct, read with ``source.kind``, as in Trino).

What DuckDB cannot prove: Glue's type mapping and Athena's partition projection (an injected partition refuses a query
without static run ids; DuckDB does not); both are checked in the template (tests/infra/test_infra_catalog.py). Nor that
Trino's SQL accepts the exact text: that needs Athena.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from infra.catalog import (
    EXAMPLE_RUN_IDS,
    EXAMPLE_UPLOAD_PREFIX,
    PREDICTION_COLUMNS,
    PREDICTIONS_TABLE,
    RUN_COLUMNS,
    RUN_ID_COLUMN,
    RUN_SOURCE_COLUMNS,
    RUNS_TABLE,
    SAVED_QUERIES,
)
from job.pipeline import RUN_SOURCE_FIELDS

pytestmark = pytest.mark.spark
README = Path(__file__).resolve().parents[2] / "docs" / "job.md"
README_SECTION = "## Querying results with SQL (Athena)"
LOWEST_CONFIDENCE_LIMIT = 20


def readme_queries() -> list[str]:
    text = README.read_text()
    section = text[text.index(README_SECTION):]
    end = section.find("\n## ", len(README_SECTION))  # the next section, if any
    section = section if end < 0 else section[:end]
    return [block.strip() for block in re.findall(r"```sql\n(.*?)```", section, re.DOTALL)]


def with_runs(sql: str, run_ids: tuple[str, ...]) -> str:
    """The query with the example run ids replaced by real ones, as a user does."""
    for example, real in zip(EXAMPLE_RUN_IDS, run_ids):
        sql = sql.replace(f"'{example}'", f"'{real}'")
    return sql


def visible_parquet(run_dir: Path) -> list[str]:
    return sorted(
        str(path) for path in (run_dir / "predictions").iterdir() if not path.name.startswith(("_", "."))
    )


def duckdb_type(glue_type) -> str:
    """A Glue column type (``string``, ``bigint``, ``int``, ``struct<name:type,...>``) as DuckDB spells it."""
    text = glue_type.input_string.replace("struct<", "STRUCT(").replace(">", ")").replace(":", " ")
    return re.sub(r"\b(string|bigint|int)\b", lambda match: {"string": "VARCHAR", "bigint": "BIGINT",
                                                                  "int": "INTEGER"}[match.group(1)], text)


@pytest.fixture(scope="module")
def connection(job_results):
    """An in-memory DuckDB with a view shaped as the Glue table: its columns, then the run id from the folder."""
    files = [path for run_id in job_results.run_ids for path in visible_parquet(job_results.run_dir(run_id))]
    columns = ", ".join(name for name, _ in PREDICTION_COLUMNS)
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW {PREDICTIONS_TABLE} AS SELECT {columns}, "
        f"regexp_extract(filename, '/results/([^/]+)/predictions/[^/]+$', 1) AS {RUN_ID_COLUMN} "
        f"FROM read_parquet({files!r}, filename = true)"
    )
    records = sorted(str(path) for path in (job_results.root / "runs").iterdir())
    run_columns = {name: duckdb_type(column_type) for name, column_type in RUN_COLUMNS}
    con.execute(
        f"CREATE VIEW {RUNS_TABLE} AS SELECT * FROM "
        f"read_json({records!r}, format = 'newline_delimited', columns = {run_columns!r})"
    )
    yield con
    con.close()


def query(con, sql: str) -> list[dict]:
    result = con.execute(sql)
    names = [column[0] for column in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def parquet_rows(job_results, run_id: str) -> list[dict]:
    rows = []
    for path in visible_parquet(job_results.run_dir(run_id)):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def test_readme_shows_the_saved_queries_first():
    """The section's first queries are the saved ones, in order (then the key lookup, which is not saved)."""
    assert readme_queries()[: len(SAVED_QUERIES)] == [query.sql for query in SAVED_QUERIES]


def test_the_run_records_have_the_runs_tables_columns(job_results):
    """The job's records and the Glue table agree: the same fields, each source field a column of the struct."""
    assert [name for name, _ in RUN_SOURCE_COLUMNS] == list(RUN_SOURCE_FIELDS)
    for run_id in job_results.run_ids:
        lines = job_results.run_record(run_id).read_text().splitlines()
        assert len(lines) == 1  # the JSON SerDe reads one object per line
        record = json.loads(lines[0])
        assert list(record) == [name for name, _ in RUN_COLUMNS]
        assert record[RUN_ID_COLUMN] == run_id


def test_runs_from_one_upload_prefix_are_the_runs_whose_source_is_that_prefix(connection, job_results):
    (from_prefix,) = [saved for saved in SAVED_QUERIES if saved.name == "runs from one upload prefix"]
    sql = readme_queries()[SAVED_QUERIES.index(from_prefix)].replace(
        f"'{EXAMPLE_UPLOAD_PREFIX}'", "'s3://amzn-s3-demo-bucket/incoming/run-1/'"
    )
    rows = query(connection, sql)
    # Only the retried run came from that upload prefix (the first ran on --input: no source).
    summary = json.loads((job_results.run_dir(job_results.retried_run_id) / "summary.json").read_text())
    assert rows == [
        {RUN_ID_COLUMN: job_results.retried_run_id, "status": summary["status"], "total": summary["counts"]["total"],
         "error": summary["counts"]["error"], "finished_at": summary["finished_at"],
         "report": summary["report"]["uri"]}
    ]
    assert query(connection, sql.replace("incoming/run-1/", "incoming/run-2/")) == []
    everything = query(connection, f"SELECT {RUN_ID_COLUMN}, source.kind AS kind FROM {RUNS_TABLE} ORDER BY 1")
    assert sorted((row[RUN_ID_COLUMN], row["kind"]) for row in everything) == sorted(
        [(job_results.first_run_id, None), (job_results.retried_run_id, "upload")]
    )


def test_the_view_has_the_tables_columns_and_every_row_of_both_runs(connection, job_results):
    rows = query(connection, f"SELECT {RUN_ID_COLUMN}, count(*) AS n FROM {PREDICTIONS_TABLE} GROUP BY 1 ORDER BY 1")
    expected = sorted((run_id, len(parquet_rows(job_results, run_id))) for run_id in job_results.run_ids)
    assert [(row[RUN_ID_COLUMN], row["n"]) for row in rows] == expected
    names = [column[0] for column in connection.execute(f"SELECT * FROM {PREDICTIONS_TABLE} LIMIT 0").description]
    assert names == [name for name, _ in PREDICTION_COLUMNS] + [RUN_ID_COLUMN]


@pytest.mark.parametrize("run", ["first", "retried"])
def test_per_class_counts_equal_the_parquet_and_the_runs_summary(connection, job_results, run):
    run_id = job_results.first_run_id if run == "first" else job_results.retried_run_id
    (per_class,) = [saved for saved in SAVED_QUERIES if saved.name == "per-class counts for one run"]
    rows = query(connection, with_runs(readme_queries()[SAVED_QUERIES.index(per_class)], (run_id,)))

    ok = [row for row in parquet_rows(job_results, run_id) if row["status"] == "ok"]
    expected = Counter((row["label"], row["label_name"]) for row in ok)
    assert {(row["label"], row["label_name"]): row["images"] for row in rows} == expected
    assert [row["images"] for row in rows] == sorted((row["images"] for row in rows), reverse=True)
    for row in rows:
        probabilities = [r["probability"] for r in ok if r["label"] == row["label"]]
        assert row["mean_probability"] == pytest.approx(sum(probabilities) / len(probabilities), rel=1e-6)
    summary = json.loads((job_results.run_dir(run_id) / "summary.json").read_text())
    assert {row["label_name"]: row["images"] for row in rows} == summary["per_class_counts"]


def test_lowest_confidence_images_across_runs_are_the_lowest_of_the_named_runs(connection, job_results):
    (lowest,) = [saved for saved in SAVED_QUERIES if saved.name == "lowest-confidence images across runs"]
    rows = query(connection, with_runs(readme_queries()[SAVED_QUERIES.index(lowest)], job_results.run_ids))

    candidates = [
        (row["probability"], row["source"], row["index"], run_id)
        for run_id in job_results.run_ids
        for row in parquet_rows(job_results, run_id)
        if row["status"] == "ok"
    ]
    expected = sorted(candidates)[:LOWEST_CONFIDENCE_LIMIT]
    assert [(row["probability"], row["source"], row["index"], row[RUN_ID_COLUMN]) for row in rows] == expected
    for row in rows:
        best = row["top_k"][0]
        assert set(best) == {"label", "probability"}
        assert best["probability"] == row["probability"]

