"""``iot-guard audit keygen`` and ``iot-guard audit verify`` (registered by iot_guard.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = subparsers.add_parser(
        "audit", help="the signed audit chain: keys, verification, inclusion proofs"
    ).add_subparsers(dest="audit_command", required=True)

    keygen = audit.add_parser(
        "keygen", help="write DIR/audit.key (private, 0600) and DIR/audit.pub for one guard"
    )
    keygen.add_argument("--out", required=True, type=Path, metavar="DIR")
    keygen.add_argument(
        "--origin", help="the key's name, which is the chain's origin: one per guard instance,"
                         " e.g. guard-a.example.com/audit (default: HOSTNAME/iot-guard)")
    keygen.set_defaults(handler=cmd_keygen)

    verify = audit.add_parser(
        "verify", help="check the chain and every signed checkpoint of audit log files"
    )
    verify.add_argument("logs", nargs="+", type=Path, metavar="LOG",
                        help="log files in any order: rotated files of a chain, or several "
                             "guards' chains (one per origin)")
    verify.add_argument("--pubkey", action="append", required=True, type=Path, metavar="F",
                        help="public key file (audit.pub); repeat for several guard instances")
    verify.add_argument("--prove", type=int, metavar="N",
                        help="also print and check the inclusion proof of record N (its seq)")
    verify.set_defaults(handler=cmd_verify)


def _usage(message: str) -> int:
    print(f"iot-guard: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_keygen(args: argparse.Namespace) -> int:
    from .checkpoint import NoteError, check_key_name
    from .log import default_origin
    from .signer import KeyFileError, write_keys

    try:
        origin = check_key_name(args.origin or default_origin())
        key_path, pub_path = write_keys(args.out, origin)
    except (KeyFileError, NoteError) as exc:
        return _usage(str(exc))
    except OSError as exc:
        return _usage(f"{args.out}: {exc.strerror or exc}")
    print(f"wrote {key_path} (private, 0600) and {pub_path} for origin {origin}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from .signer import KeyFileError, NoteVerifier, load_verifiers
    from .verifier import verify_logs

    verifiers: list[NoteVerifier] = []
    try:
        for path in args.pubkey:
            verifiers += load_verifiers(path)
    except KeyFileError as exc:
        return _usage(str(exc))
    for path in args.logs:
        if not path.is_file():
            return _usage(f"{path}: no such file")
    if args.prove is not None and args.prove < 0:
        return _usage("--prove takes a record number (seq) >= 0")
    reports = verify_logs(args.logs, verifiers, args.prove)
    if args.prove is not None and len(reports) > 1:
        return _usage(f"--prove needs the files of one chain ({len(reports)} chains given)")
    failed = False
    for report in reports:
        if report.ok:
            print(report.summary())
            if report.proof is not None:
                print("\n".join(report.proof.lines()))
        else:
            failed = True
            print(report.problem, file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK
