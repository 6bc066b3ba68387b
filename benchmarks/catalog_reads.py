"""What surviving a database restart costs a catalog read: ``pool_pre_ping`` on and off.

    python -m benchmarks catalog_reads [--db URL] [--calls 2000] [--repeats 7]

The server reads the catalog through :func:`indexer.db_read.run`: one session per read, whose
connection the pool tests first (``SELECT 1``) when pre-ping is on (issue 25.8: a connection a
restarted PostgreSQL dropped is made again instead of failing the request). This times
``--calls`` reads of one image's status (an indexed primary-key query, what every search and id
route does) with the two engines alternated over ``--repeats`` (figures compared within the
run, as ratios), on SQLite in a temporary folder or on ``--db`` (e.g. the PostgreSQL server of
``tests/postgres_fixtures.py``; a new catalog is created there, so give an empty database).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.harness import Table, interleaved, machine_line, median_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks catalog_reads",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="catalog URL (default: SQLite, temporary)")
    parser.add_argument("--calls", type=int, default=2000, help="reads per timing")
    parser.add_argument("--repeats", type=int, default=7, help="alternated timings per engine")
    args = parser.parse_args(argv)

    from indexer import db_read
    from indexer.engine import describe_database, make_engine, make_sessionmaker

    folder = tempfile.TemporaryDirectory()
    url = args.db or f"sqlite:///{Path(folder.name) / 'catalog.sqlite'}"
    make_engine(url, create=True).dispose()  # the schema, created once
    sessions = {ping: make_sessionmaker(make_engine(url, pre_ping=ping)) for ping in (False, True)}

    def reads(ping: bool):
        def run():
            for i in range(args.calls):
                db_read.run(sessions[ping], db_read.image_status, [i + 1])
        return run

    times = interleaved({"pre-ping off": reads(False), "pre-ping on": reads(True)},
                        args.repeats)
    print(machine_line())
    table = Table(f"Catalog reads ({describe_database(url)}), {args.calls} reads x "
                  f"{args.repeats}, alternated", ("engine", "median ms per read", "ratio"))
    base = median_ms(times["pre-ping off"]) / args.calls
    print("\n".join(table.lines))
    for name, seconds in times.items():
        per_read = median_ms(seconds) / args.calls
        table.row(name, f"{per_read:.3f}", f"{per_read / base:.2f}x")
    for maker in sessions.values():
        maker.kw["bind"].dispose()
    folder.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
