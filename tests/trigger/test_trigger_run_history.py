"""`python -m infra.runs list | which | rerun` against moto (issue 18, part 3): runs made by the real trigger handler
(claims table batch records, batch manifests), with the summary.json the job writes; a rerun goes through the trigger
again into a new run id. moto's S3, EMR and DynamoDB in-process; what it cannot show: steps that really end (moto never
runs one), so a run's summary is written here as the job writes it (tests/job covers the job writing it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import emr_step
import pytest
from promises import invoke
from trigger_helpers import BUCKET, CLAIMS_TABLE, read_json, submitted_steps, upload

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from infra import runs as run_commands  # noqa: E402


def step_run(aws, step) -> tuple[str, dict]:
    """The run id a step writes (its --output folder) and the batch manifest it reads."""
    arguments = emr_step.job_arguments(step)
    output = arguments[arguments.index("--output") + 1]
    manifest = read_json(aws.s3, arguments[arguments.index("--manifest") + 1].removeprefix(f"s3://{BUCKET}/"))
    return output.rstrip("/").rsplit("/", 1)[1], manifest


def write_summary(aws, run: str, manifest: dict, *, total: int, errors: int) -> None:
    """What the job writes at the end of a run (job/pipeline.py): the fields the listing reads."""
    summary = {
        "status": "succeeded",
        "counts": {"total": total, "ok": total - errors, "error": errors, "skipped_objects": 0},
        "source": manifest["source"],
        "report": {"uri": f"s3://{BUCKET}/results/{run}/report.html"},
    }
    aws.s3.put_object(Bucket=BUCKET, Key=f"results/{run}/summary.json", Body=json.dumps(summary).encode())


@pytest.fixture
def two_runs(aws, persistent_cluster, persistent_handler):
    """Two batches: the first finished (its summary written), the second still submitted."""
    first = invoke(persistent_handler, {"m-a": upload(aws.s3, "incoming/run-1/a.png", b"a", sequence=1)})
    second = invoke(persistent_handler, {"m-b": upload(aws.s3, "incoming/run-2/b.png", b"b", sequence=2)})
    assert first == second == {"batchItemFailures": []}
    (done, manifest), (waiting, _) = (step_run(aws, step) for step in submitted_steps(aws.emr, persistent_cluster))
    write_summary(aws, done, manifest, total=1, errors=0)
    return done, waiting


def test_list_shows_each_run_with_state_count_failures_source_and_report(aws, two_runs):
    done, waiting = two_runs

    runs = {run.run_id: run for run in run_commands.list_runs(aws.s3, aws.dynamodb, bucket=BUCKET,
                                                               claims_table=CLAIMS_TABLE)}  # fmt: skip

    assert set(runs) == {done, waiting}
    assert runs[done] == run_commands.Run(
        run_id=done, state="succeeded", images=1, failures=0,
        source={"kind": "upload", "prefix": f"s3://{BUCKET}/incoming/run-1/", "uploads": 1},
        report=f"s3://{BUCKET}/results/{done}/report.html",
    )  # fmt: skip
    assert runs[waiting].state == "submitted" and runs[waiting].images is None
    assert runs[waiting].source["prefix"] == f"s3://{BUCKET}/incoming/run-2/"


def test_the_list_command_prints_a_table_and_json(aws, two_runs, capsys):
    done, waiting = two_runs
    options = ["--data-bucket", BUCKET, "--claims-table", CLAIMS_TABLE]

    assert run_commands.main([*options, "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["RUN", "ID", "STATE", "IMAGES"]
    assert [line.split()[0] for line in table[1:]] == sorted([done, waiting])
    assert run_commands.main([*options, "list", "--json"]) == 0
    assert [json.loads(line)["run_id"] for line in capsys.readouterr().out.splitlines()] == sorted([done, waiting])


def test_which_names_the_run_that_listed_an_object(aws, two_runs, capsys):
    done, waiting = two_runs

    assert run_commands.main(["--data-bucket", BUCKET, "which", f"s3://{BUCKET}/incoming/run-2/b.png"]) == 0
    assert capsys.readouterr().out.split() == [waiting]
    assert run_commands.runs_of_object(aws.s3, bucket=BUCKET, uri=f"s3://{BUCKET}/incoming/run-9/none.png") == []


def test_a_rerun_goes_through_the_trigger_into_a_new_run_id_once(aws, persistent_cluster, persistent_handler, two_runs):
    done, _ = two_runs
    first_key = run_commands.rerun(aws.s3, bucket=BUCKET, run=done, run_name=None)
    assert first_key == f"incoming/runs/rerun-{done}/part-00001.json"
    assert run_commands.rerun(aws.s3, bucket=BUCKET, run=done, run_name=None) is None  # one rerun per name

    etag = aws.s3.head_object(Bucket=BUCKET, Key=first_key)["ETag"].strip('"')
    from trigger_helpers import s3_notification

    assert invoke(persistent_handler, {"m-rerun": s3_notification(first_key, etag, "0A")}) == {"batchItemFailures": []}
    steps = submitted_steps(aws.emr, persistent_cluster)
    (rerun_id, manifest) = step_run(aws, steps[-1])
    (_, original) = step_run(aws, steps[0])
    assert len(steps) == 3 and rerun_id != done
    assert manifest["objects"] == original["objects"]
    assert manifest["source"] == {
        "kind": "rerun", "manifest": f"s3://{BUCKET}/{first_key}", "rerun_of": done, "run_name": f"rerun-{done}",
        "input": f"s3://{BUCKET}/incoming/run-1/",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["rerun", "not-a-run"], "run id 'not-a-run'"),
        (["rerun", "20261201093000a1b2c3"], "no batch manifest"),
        (["rerun", "20261201093000a1b2c3", "--run-name", "../x"], "--run-name '../x'"),
        (["list"], "--claims-table NAME or --stack-outputs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(aws, capsys, arguments, message):
    assert run_commands.main(["--data-bucket", BUCKET, *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_the_stack_outputs_file_names_the_bucket_and_table(aws, two_runs, tmp_path, capsys):
    outputs = tmp_path / "cdk-outputs.json"
    outputs.write_text(json.dumps({"Inference": {"DataBucketName": BUCKET, "ClaimsTableName": CLAIMS_TABLE}}))

    assert run_commands.main(["--stack-outputs", str(outputs), "list", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize(
    "text", ["20261201093005abcdef", "20261201093005abcdef-2", "20261201093005abcdef-9", "", "short",
             "20261201093005abcdef-1", "20261201093005abcdef-02", "20261201093005abc_ef", "20261201093005abcdef-x"],
)  # fmt: skip
def test_the_commands_read_run_ids_as_the_function_writes_them(text):
    """infra/runs.py runs on a user's machine and cannot import the function's modules (they import each other as
    top-level modules, from the function's own code root), so it keeps its own copy of the run-id rule: held equal."""
    import runs as function_runs

    assert run_commands.parse_run_id(text) == function_runs.parse_run_id(text)
    parsed = function_runs.parse_run_id(text)
    if parsed is not None:
        assert run_commands.run_id(*parsed) == function_runs.run_id(*parsed) == text
