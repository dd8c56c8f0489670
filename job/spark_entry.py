"""Entry script for ``spark-submit`` (how EMR runs the job): ``spark-submit --py-files job.zip spark_entry.py ARGS``.

The master comes from spark-submit; the ``job`` package from ``--py-files``, or from the directory above this file when
the script is run from a source checkout.
"""

import os
import sys

try:
    import job  # noqa: F401  (shipped with --py-files)
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from job.cli import main  # noqa: E402

sys.exit(main(use_spark_submit_master=True))
