"""Every run queryable with SQL where it lands: a Glue table over ``results/<run id>/predictions/``, a table ``runs``
over the one-line record each run writes to ``runs/<run id>.json`` (what it came from, its status and counts), an Athena
workgroup with saved queries, and a managed policy for the people who read results.

The run id is a partition resolved by Athena's partition projection, so a run is queryable the moment its step wrote
it: no crawler, no ``MSCK REPAIR``, no call per run. The projection type is ``injected`` (the query names the runs),
because no other type matches every run id. A run id is a batch id, ``YYYYMMDDHHMMSS`` and 6 random hex digits
(trigger_function/runs.py), with ``-<n>`` for the n-th attempt: ``enum`` would need a deploy per run, ``integer`` and
``date`` project every value of a range and cannot produce the random digits. The price: every query must say which
runs it reads (``WHERE run_id = '...'`` or ``run_id IN (...)``), or Athena refuses it before reading anything. That also
keeps a careless query from scanning every run ever made.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_athena as athena
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import acknowledge, object_wildcard_finding
from infra.storage import QUERY_RESULTS_PREFIX, RESULTS_PREFIX, RUNS_PREFIX

PREDICTIONS_TABLE = "predictions"
RUN_ID_COLUMN = "run_id"
PREDICTIONS_FOLDER = "predictions/"
# The job's output (README, "Output"; job/worker.py OUTPUT_SCHEMA) as Glue types, in the job's column order. infra/
# imports nothing from job/: tests/catalog compares these with the Parquet schema of a run of the real job.
PREDICTION_COLUMNS = (
    ("source", glue.Schema.STRING),
    ("index", glue.Schema.BIG_INT),
    ("status", glue.Schema.STRING),
    ("error", glue.Schema.STRING),
    ("label", glue.Schema.INTEGER),
    ("label_name", glue.Schema.STRING),
    ("probability", glue.Schema.FLOAT),
    (
        "top_k",
        glue.Schema.array(
            glue.Schema.struct(
                [
                    glue.Column(name="label", type=glue.Schema.INTEGER),
                    glue.Column(name="probability", type=glue.Schema.FLOAT),
                ]
            )
        ),
    ),
    ("true_label", glue.Schema.INTEGER),
)
RUNS_TABLE = "runs"
# A run's source (job/pipeline.py RUN_SOURCE_FIELDS; infra/trigger_function/uploads.py, infra/submit_run.py and
# infra/runs.py make them): a field a source does not have is null.
RUN_SOURCE_COLUMNS = (
    ("kind", glue.Schema.STRING),
    ("prefix", glue.Schema.STRING),
    ("uploads", glue.Schema.BIG_INT),
    ("manifest", glue.Schema.STRING),
    ("input", glue.Schema.STRING),
    ("run_name", glue.Schema.STRING),
    ("rerun_of", glue.Schema.STRING),
    ("part", glue.Schema.INTEGER),
    ("parts", glue.Schema.INTEGER),
)
# The job's run record (job/pipeline.py run_record), one JSON object per line: tests/catalog compares these with the
# records of runs of the real job.
RUN_COLUMNS = (
    (RUN_ID_COLUMN, glue.Schema.STRING),
    ("status", glue.Schema.STRING),
    ("source", glue.Schema.struct([glue.Column(name=name, type=kind) for name, kind in RUN_SOURCE_COLUMNS])),
    ("total", glue.Schema.BIG_INT),
    ("ok", glue.Schema.BIG_INT),
    ("error", glue.Schema.BIG_INT),
    ("model_name", glue.Schema.STRING),
    ("started_at", glue.Schema.STRING),
    ("finished_at", glue.Schema.STRING),
    ("report", glue.Schema.STRING),
    ("summary", glue.Schema.STRING),
)
ATHENA_ENGINE_VERSION = "Athena engine version 3"
BYTES_PER_GB = 10**9
# Run ids of the right shape in the saved queries (and the README): the user puts the ids of their runs there.
EXAMPLE_RUN_IDS = ("20261201093000a1b2c3", "20261202141500d4e5f6-2")
# An upload prefix as a run's source names it (the user puts theirs there).
EXAMPLE_UPLOAD_PREFIX = "s3://BUCKET/incoming/run-1/"


@dataclass(frozen=True)
class SavedQuery:
    name: str
    description: str
    sql: str


SAVED_QUERIES = (
    SavedQuery(
        name="per-class counts for one run",
        description="How many images of one run the model put in each class, with their mean top-1 probability",
        sql=f"""SELECT label, label_name, count(*) AS images, avg(probability) AS mean_probability
FROM {PREDICTIONS_TABLE}
WHERE {RUN_ID_COLUMN} = '{EXAMPLE_RUN_IDS[0]}' AND status = 'ok'
GROUP BY label, label_name
ORDER BY images DESC, label""",
    ),
    SavedQuery(
        name="lowest-confidence images across runs",
        description="The images of the named runs the model was least sure about: candidates for a human look",
        sql=f"""SELECT {RUN_ID_COLUMN}, source, index, label_name, probability, top_k
FROM {PREDICTIONS_TABLE}
WHERE {RUN_ID_COLUMN} IN ('{EXAMPLE_RUN_IDS[0]}', '{EXAMPLE_RUN_IDS[1]}') AND status = 'ok'
ORDER BY probability, source, index
LIMIT 20""",
    ),
    SavedQuery(
        name="runs from one upload prefix",
        description="The runs that uploads under one prefix started, with their status, counts and report",
        sql=f"""SELECT {RUN_ID_COLUMN}, status, total, error, finished_at, report
FROM {RUNS_TABLE}
WHERE source.kind = 'upload' AND source.prefix = '{EXAMPLE_UPLOAD_PREFIX}'
ORDER BY finished_at, {RUN_ID_COLUMN}""",
    ),
)


class ResultsCatalog(Construct):
    """The Glue database with the predictions and runs tables, the Athena workgroup with its saved queries, and the
    reader policy.

    The catalog and the workgroup are metadata over the data bucket, and their names derive from the stack's: they are
    deleted with the stack even when ``retain_data_on_destroy`` keeps the bucket (a retained database or workgroup of
    that name would make the next deploy of the same stack fail). Query results live under ``query-results/`` in the
    data bucket and stay or go with it.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        data_bucket: s3.IBucket,
        scan_limit_gb: int,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        # A plain string (the construct's attribute is a reference): IAM resources and cdk-nag findings name it.
        self.database_name = database_name(stack.stack_name)
        self.database = glue.Database(
            self,
            "Database",
            database_name=self.database_name,
            description=f"Predictions of the runs of stack {stack.stack_name}",
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.table = glue.S3Table(
            self,
            "Predictions",
            database=self.database,
            table_name=PREDICTIONS_TABLE,
            description="One row per image (per record of a CIFAR-10 batch); one partition per run",
            storage=glue.S3TableStorage.from_bucket(data_bucket),
            s3_prefix=RESULTS_PREFIX,
            data_format=glue.DataFormat.PARQUET,
            columns=[glue.Column(name=name, type=column_type) for name, column_type in PREDICTION_COLUMNS],
            partition_keys=[glue.Column(name=RUN_ID_COLUMN, type=glue.Schema.STRING)],
            partition_projection={RUN_ID_COLUMN: glue.PartitionProjectionConfiguration.injected()},
            parameters={
                "storage.location.template": data_bucket.s3_url_for_object(
                    f"{RESULTS_PREFIX}${{{RUN_ID_COLUMN}}}/{PREDICTIONS_FOLDER}"
                )
            },
            # The objects are SSE-S3, which S3 decrypts for any reader; has_encrypted_data means client-side (CSE-KMS).
            has_encrypted_data=False,
        )
        # No partitions: one small object per run, and a query over every run reads only these records.
        self.runs_table = glue.S3Table(
            self,
            "Runs",
            database=self.database,
            table_name=RUNS_TABLE,
            description="One row per run: what it came from, its status, counts, model, times, report and summary",
            storage=glue.S3TableStorage.from_bucket(data_bucket),
            s3_prefix=RUNS_PREFIX,
            data_format=glue.DataFormat.JSON,
            columns=[glue.Column(name=name, type=column_type) for name, column_type in RUN_COLUMNS],
            has_encrypted_data=False,
        )
        self.workgroup = athena.CfnWorkGroup(
            self,
            "Workgroup",
            name=f"{stack.stack_name}-results",
            description="Queries over this stack's predictions: results encrypted, settings enforced, scans capped",
            state="ENABLED",
            # Users save their own queries in the workgroup: without this, destroy would stop at a non-empty one.
            recursive_delete_option=True,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                # Clients cannot override the results location, its encryption, or the scan limit.
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=scan_limit_gb * BYTES_PER_GB,
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(
                    selected_engine_version=ATHENA_ENGINE_VERSION
                ),
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=data_bucket.s3_url_for_object(QUERY_RESULTS_PREFIX),
                    # SSE-S3 like the results the queries read (the data bucket is SSE-S3 so that access logs can be
                    # delivered): a reader needs no grant on the stack's KMS key.
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_S3"
                    ),
                ),
            ),
        )
        self.saved_queries = [
            athena.CfnNamedQuery(
                self,
                f"SavedQuery{position}",
                name=query.name,
                description=query.description,
                database=self.database.database_name,
                query_string=query.sql,
                work_group=self.workgroup.ref,
            )
            for position, query in enumerate(SAVED_QUERIES, start=1)
        ]
        self.reader_policy = self._reader_policy(data_bucket)

    def _reader_policy(self, data_bucket: s3.IBucket) -> iam.ManagedPolicy:
        """Query the predictions in this workgroup and read what the runs wrote; nothing else of the stack."""
        stack = Stack.of(self)
        database = self.database_name
        workgroup_arn = stack.format_arn(service="athena", resource="workgroup", resource_name=self.workgroup.ref)
        catalog_arn = stack.format_arn(service="glue", resource="catalog")
        database_arn = stack.format_arn(service="glue", resource="database", resource_name=database)
        tables_arn = stack.format_arn(service="glue", resource="table", resource_name=f"{database}/*")
        listed = (RESULTS_PREFIX, RUNS_PREFIX, QUERY_RESULTS_PREFIX)
        policy = iam.ManagedPolicy(
            self,
            "ReaderPolicy",
            description=f"Query and read the inference results of stack {stack.stack_name}",
            statements=[
                iam.PolicyStatement(
                    sid="QueryInTheResultsWorkgroup",
                    actions=[
                        "athena:StartQueryExecution",
                        "athena:StopQueryExecution",
                        "athena:GetQueryExecution",
                        "athena:GetQueryResults",
                        "athena:GetQueryResultsStream",
                        "athena:BatchGetQueryExecution",
                        "athena:ListQueryExecutions",
                        "athena:GetWorkGroup",
                        "athena:GetNamedQuery",
                        "athena:BatchGetNamedQuery",
                        "athena:ListNamedQueries",
                    ],
                    resources=[workgroup_arn],
                ),
                iam.PolicyStatement(
                    sid="ReadTheResultsTables",
                    actions=["glue:GetDatabase", "glue:GetTable", "glue:GetTables"],
                    resources=[catalog_arn, database_arn, tables_arn],
                ),
                iam.PolicyStatement(
                    sid="ReadRunResults",
                    # Predictions, summary.json and report.html of every run, and the runs table's records.
                    actions=["s3:GetObject"],
                    resources=[data_bucket.arn_for_objects(prefix + "*") for prefix in (RESULTS_PREFIX, RUNS_PREFIX)],
                ),
                iam.PolicyStatement(
                    sid="WriteAndReadOwnQueryResults",
                    # Athena writes a query's results with the caller's credentials, in parts when they are large.
                    actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                    resources=[data_bucket.arn_for_objects(QUERY_RESULTS_PREFIX + "*")],
                ),
                iam.PolicyStatement(
                    sid="ListRunResultsAndQueryResults",
                    actions=["s3:ListBucket"],
                    resources=[data_bucket.bucket_arn],
                    conditions={"StringLike": {"s3:prefix": [prefix + "*" for prefix in listed]}},
                ),
                iam.PolicyStatement(
                    sid="FindTheBucketsRegion", actions=["s3:GetBucketLocation"], resources=[data_bucket.bucket_arn]
                ),
            ],
        )
        acknowledge(
            policy,
            object_wildcard_finding(data_bucket, RESULTS_PREFIX),
            "A reader reads every run's results (run ids are made at upload time); read-only.",
        )
        acknowledge(
            policy,
            object_wildcard_finding(data_bucket, RUNS_PREFIX),
            "Athena reads every run's record to answer a query over the runs table; read-only.",
        )
        acknowledge(
            policy,
            object_wildcard_finding(data_bucket, QUERY_RESULTS_PREFIX),
            "Athena names each query's result file by its execution id; the prefix is the workgroup's own.",
        )
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:glue:<AWS::Region>:<AWS::AccountId>:table/{database}/*]",
            "The stack's own database holds only the predictions and runs tables; GetTables (the console's table "
            "list) asks for the database's tables.",
        )
        return policy


def database_name(stack_name: str) -> str:
    """A Glue database name Athena accepts without quoting (lower case, digits, '_'), unique per stack and region."""
    return "".join(character if character.isalnum() else "_" for character in stack_name.lower()) + "_results"
