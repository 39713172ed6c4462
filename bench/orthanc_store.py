"""C-STORE throughput into Orthanc, as a yardstick for Lancang.

    python bench/orthanc_store.py --data DIR [--count 800] [--associations 1,4]

Generates the synthetic CT series into DIR if it is not there yet, then, for
each association count, starts a fresh Orthanc and sends the whole series
with dcmtk storescu (TCP_NODELAY=1 on both sides).  Runs inside a private
network namespace, re-executing itself under `unshare -n` if needed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if not __package__:                      # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ctgen, peers  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CT series folder")
    parser.add_argument("--count", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--associations", default="1,4",
                        help="comma-separated association counts, one fresh Orthanc each")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per association count (each on a fresh Orthanc)")
    parser.add_argument("--workdir", type=Path, help="keep Orthanc state here (default: temp)")
    return parser.parse_args(argv)


def prepare_data(folder: Path, count: int, seed: int) -> list[Path]:
    started = time.perf_counter()
    fresh = not ctgen.is_generated(folder, count, seed=seed)
    files = ctgen.generate(folder, count, seed=seed)
    if fresh:
        print(f"generated {len(files)} slices in {time.perf_counter() - started:.1f} s")
    return files


def run_orthanc(workdir: Path, files: list[Path], associations: int) -> peers.StoreRate:
    """A fresh Orthanc receives `files` over `associations` associations."""
    dicom_port, http_port = peers.free_port(), peers.free_port()
    with peers.start_orthanc(workdir, dicom_port, http_port) as orthanc:
        peers.echoscu("127.0.0.1", dicom_port, orthanc.aet)
        os.sync()                        # no writeback of earlier runs during timing
        rate = peers.time_storescu("127.0.0.1", dicom_port, orthanc.aet, files, associations)
        stored = orthanc.instance_count()
        if stored != len(files):
            raise RuntimeError(f"Orthanc holds {stored} instances, sent {len(files)}")
    return rate


def measure(keep: Path | None, name: str, files: list[Path], associations: int) -> peers.StoreRate:
    """One run, in keep/name if given, else in a scratch folder removed afterwards."""
    if keep is not None:
        return run_orthanc(keep / name, files, associations)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as scratch:
        return run_orthanc(Path(scratch), files, associations)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peers.ensure_private_netns()
    files = prepare_data(args.data, args.count, args.seed)
    counts = [int(n) for n in args.associations.split(",")]
    for n in counts:
        rates = []
        for run in range(args.repeat):
            rates.append(measure(args.workdir, f"orthanc-{n}assoc-{run}", files, n))
            print(f"Orthanc, {n} association(s): {rates[-1]}")
        if args.repeat > 1:
            print(f"Orthanc, {n} association(s): median "
                  f"{statistics.median(r.instances_per_s for r in rates):.0f} instances/s, "
                  f"{statistics.median(r.mb_per_s for r in rates):.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
