"""`cds roundtrip --fhir-base URL [--token T] [--dicomweb URL]`: the EHR round trip, step by step.

Runs cds.fhir.roundtrip against any FHIR R4 server and prints a pass/fail table; exit code 0 only
when no step failed (1 otherwise). Meant for integrators trying a sandbox before go-live; it
creates tagged synthetic test resources and deletes them at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "roundtrip", help="check the FHIR round trip (seed, hooks fetch, write-back) against a FHIR R4 server"
    )
    parser.add_argument(
        "--fhir-base", required=True, help="FHIR R4 base URL, e.g. https://hapi.fhir.org/baseR4"
    )
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token for the server (default: $CDS_ROUNDTRIP_TOKEN; never printed)",
    )
    parser.add_argument(
        "--dicomweb",
        default=None,
        help="DICOMweb root for the test Endpoint (fetched through it when --study-uid is given)",
    )
    parser.add_argument("--study-uid", default=None, help="an existing study on --dicomweb to resolve")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per HTTP request (default 20)")
    parser.add_argument("--keep", action="store_true", help="leave the created test resources on the server")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    from cds.fhir.roundtrip import Outcome, RoundTrip, format_table

    if not args.verbose:  # the table is the output; the throwaway app's logs are noise here
        for name in ("alembic", "cds.hooks"):
            logging.getLogger(name).setLevel(logging.WARNING)
    trip = RoundTrip(
        args.fhir_base,
        args.token or os.environ.get("CDS_ROUNDTRIP_TOKEN") or None,
        dicomweb=args.dicomweb,
        study_uid=args.study_uid,
        timeout_s=args.timeout,
        cleanup=not args.keep,
    )
    results = trip.run()
    print(format_table(results))
    return 1 if any(r.outcome is Outcome.FAIL for r in results) else 0
