"""``python -m bench.sweep SPEC ...``: the sweep command without the rest of the CLI."""

import argparse
import sys

from bench.errors import BenchError
from bench.sweep.command import add_arguments, main

parser = argparse.ArgumentParser(prog="bench sweep")
add_arguments(parser)
try:
    sys.exit(main(parser.parse_args()))
except BenchError as exc:
    print(f"bench: error: sweep: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
except KeyboardInterrupt:  # a running sweep has already said how to resume
    print("bench: interrupted", file=sys.stderr)
    sys.exit(130)
