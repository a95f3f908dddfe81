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
    expectation = benches.add_parser("expectation", help="π's E[y] vs a sampling reference")
    expectation.add_argument("--reference", type=int, default=10 ** 7)
    expectation.add_argument("--seed", type=int, default=0)
    expectation.add_argument("--setting", choices=("foundation", "wide"), default="foundation")
    expectation.add_argument("--methods", default="gaussian", help="comma-separated methods")
    tails = benches.add_parser("tails", help="tail-probability estimators vs ground truth over a zoo of networks")
    tails.add_argument("--quick", action="store_true", help="three small cases (under a minute)")
    tails.add_argument("--methods", help="comma-separated methods (default: every method but sampling)")
    tails.add_argument("--cache", default=".pitrack-cache/bench-tails", help="ground-truth cache folder")
    tails.add_argument("--csv", default="out/bench_tails.csv")
    tails.add_argument("--png", default="out/bench_tails.png")
    halfspaces = benches.add_parser("halfspaces", help="halfspace intersections, 3-CNF and permanents vs exact answers")
    halfspaces.add_argument("--quick", action="store_true", help="a few small cases (about a minute)")
    halfspaces.add_argument("--repeats", type=int, default=10, help="seeds per case (MSE over repeats)")
    halfspaces.add_argument("--budget", type=float, default=3000, help="sample-equivalents per estimate")
    halfspaces.add_argument("--csv", default="out/bench_halfspaces.csv")
    halfspaces.add_argument("--png", default="out/bench_halfspaces.png")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run
        run(reference=args.reference, seed=args.seed)
    elif args.bench == "expectation":
        from .bench_expectation import run as bench_run
        bench_run(reference=args.reference, seed=args.seed, setting=args.setting,
                  methods=tuple(args.methods.split(",")))
    elif args.bench == "tails":
        from .bench_tails import run as tails_run
        tails_run(quick=args.quick, methods=args.methods.split(",") if args.methods else None,
                  cache=args.cache, csv_path=args.csv, png_path=args.png)
    elif args.bench == "halfspaces":
        from .bench_halfspaces import run as halfspaces_run
        halfspaces_run(quick=args.quick, repeats=args.repeats, budget=args.budget, csv_path=args.csv,
                       png_path=args.png)


if __name__ == "__main__":
    main()
