"""`pitrack`: the command line. Subcommands grow with the project."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pitrack", description="π-tracker: catastrophe rates from structure")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="π vs sampling at equal FLOPs on the embedded default model")
    demo.add_argument("--reference", type=int, default=5 * 10 ** 7, help="samples in the reference run")
    demo.add_argument("--seed", type=int, default=0)
    bench = commands.add_parser("bench", help="benchmarks")
    benches = bench.add_subparsers(dest="bench", required=True)
    expectation = benches.add_parser("expectation", help="E[y] of gaussian propagation vs a sampling reference")
    expectation.add_argument("--reference", type=int, default=10 ** 7)
    expectation.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run
        run(reference=args.reference, seed=args.seed)
    elif args.bench == "expectation":
        from .bench_expectation import run as bench_run
        bench_run(reference=args.reference, seed=args.seed)


if __name__ == "__main__":
    main()
