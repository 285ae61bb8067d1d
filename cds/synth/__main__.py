"""`python -m cds.synth --out DIR --n N --seed S`: same as `cds synth`."""

from __future__ import annotations

import argparse
import sys

from cds.commands.synth import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cds.synth", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
