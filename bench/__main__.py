"""``python -m bench``: every benchmark, each printing its table."""

import sys

from bench import codecs, ingest, rules

sys.exit(codecs.main([]) or rules.main([]) or ingest.main(sys.argv[1:]))
