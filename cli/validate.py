"""``loralens validate``: check a store, and repair what does not decode."""

from __future__ import annotations

import argparse

from loralens.cli import options


def add(sub: argparse._SubParsersAction) -> None:
    """Add ``loralens validate``'s parser to ``sub``."""
    v = sub.add_parser("validate", help="check a store: schema, shapes, NaN/Inf, completeness")
    v.add_argument("store", help="a directory or fsspec URL")
    v.add_argument("--repair", action="store_true",
                   help="repair what does not decode: table rows are read again from their source audio, layer-"
                        "major copies rebuilt, checkpoint rows unmarked so the same loralens trace captures them")
    v.add_argument("--upgrade", action="store_true",
                   help="first bring a store of an older schema this loralens can upgrade to its own, in place "
                        "(drops arrays no figure reads); then check it")
    options.add_storage(v)
    v.set_defaults(func=run)


def _sizes_text(store: str, storage_options: dict | None = None) -> str:
    from loralens.store.validate import sizes

    parts = sizes(store, storage_options)
    return "\n".join([f"stored: {sum(parts.values()) / 2**30:.2f} GiB",
                      *(f"  {part}: {n / 2**20:,.1f} MiB" for part, n in parts.items())])


def run(args: argparse.Namespace) -> int:
    """Run ``loralens validate``; returns its exit status."""
    from loralens.store.validate import repair, validate

    storage = options.storage(args)
    if args.upgrade:
        from loralens.store.schema import SCHEMA_VERSION
        from loralens.store.writer import upgrade

        removed = upgrade(args.store, storage)
        print(f"{args.store}: schema version {SCHEMA_VERSION}" + (f"; removed {len(removed)} array(s) no figure "
                                                                 f"reads: {', '.join(removed)}" if removed else ""))
    report = validate(args.store, storage)
    if report.ok:
        print(f"{report.summary}\n{_sizes_text(args.store, storage)}")  # one write, once all is known
        return 0
    print(f"{args.store}: {len(report.problems)} problem(s)")
    for problem in report.problems:
        print(f"  - {problem}")
    if not args.repair:
        return 1
    for done in repair(report, storage):
        print(done)
    if report.table_rows:
        from loralens.precompute.repair import restore_utterances

        restored, left = restore_utterances(args.store, report.table_rows, report.lost_columns, storage)
        if restored:
            print(f"wrote {restored} row(s) of the utterance table again from their source audio files")
        for problem in left:
            print(f"  - not repaired: {problem}")
    return 1
