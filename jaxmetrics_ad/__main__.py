"""Run the ``jaxmetrics-ad`` command line as ``python -m jaxmetrics_ad``."""

import sys

from jaxmetrics_ad.cli import main

if __name__ == "__main__":
    sys.exit(main())
