"""`python -m s3l.bench`: see the package docstring."""

import sys

from s3l.bench.cli import main
from s3l.errors import S3LError

try:
    main()
except S3LError as err:  # a wrong --root or --archs: one line, no traceback
    sys.exit(f"error: {err}")
