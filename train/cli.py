"""`pitrack`: the command line. Subcommands grow with the project."""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (a count of steps or repeats)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def reference_count(text: str) -> int:
    """argparse type: a sample count of at least 2 (a reference needs a spread)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a reference needs at least 2 samples, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a budget in sample-equivalents)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def check_writable(parser: argparse.ArgumentParser, label: str, path: Path, hint: str = "") -> None:
    """Exit with a usage error (`label`: what is wrong) unless a file can be written at
    `path`: its folder exists or can be made and is writable, and `path` is not a folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"{label}: cannot create its folder {path.parent} ({error.strerror or error})")
    if path.is_dir():
        parser.error(f"{label}: is a folder{hint}")
    if not os.access(path.parent, os.W_OK):
        parser.error(f"{label}: its folder {path.parent} is not writable")


def check_run_file(parser: argparse.ArgumentParser, path: Path) -> None:
    """Exit with a usage error unless a run file can be written at `path` (`check_writable`)
    and is not the replay plot's own .png."""
    check_writable(parser, f"demo --run-file {path}", path, f"; give a file name such as {path / 'run.h5'}")
    if path.suffix == ".png":
        parser.error(f"demo --run-file {path}: the replay plot goes to the run file with .png; name the run file "
                     f"{path.with_suffix('.h5')}")


def check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error, before any work, where an output (--csv, --png, --runs) is a
    folder or cannot be created, or where --cache is a file; a --png without a suffix gets
    .png (what matplotlib writes)."""
    for name in ("csv", "png", "runs"):
        value = getattr(args, name, None)
        if not isinstance(value, str):       # absent, or bench pool's and compare's input files
            continue
        path = Path(value)
        if name == "png" and not path.suffix:
            path = path.with_suffix(".png")
            setattr(args, name, str(path))
        check_writable(parser, f"--{name} {value}", path)
    cache = getattr(args, "cache", None)
    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        parser.error(f"--cache {cache}: is a file; give a folder")


def check_text_files(parser: argparse.ArgumentParser, paths: list[Path], bench: str) -> None:
    """Exit with a usage error naming the first of `paths` that is not a readable UTF-8 text file."""
    for path in paths:
        try:
            path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            parser.error(f"bench {bench}: {path} is not a readable CSV text file ({error})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pitrack", description="π-tracker: catastrophe rates from structure")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="π vs sampling at equal FLOPs on the embedded default model")
    demo.add_argument("--reference", type=reference_count, default=5 * 10 ** 7, help="samples in the reference run")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=positive_int, default=300, help="training steps tracked by π")
    demo.add_argument("--run-file", default="out/demo_run.h5", help="where the tracked run is written")
    demo.add_argument("--untrained", action="store_true",
                      help="skip training: compare π and sampling on the untrained default's fixed events")
    replay = commands.add_parser("replay", help="a run file's estimates over training: table and PNG plot")
    replay.add_argument("path")
    replay.add_argument("--png", help="plot file (default: the run file with .png)")
    inspect = commands.add_parser("inspect", help="summarise a run file")
    inspect.add_argument("path")
    bench = commands.add_parser("bench", help="benchmarks")
    benches = bench.add_subparsers(dest="bench", required=True)
    expectation = benches.add_parser("expectation", help="π's E[y] vs a sampling reference")
    expectation.add_argument("--reference", type=reference_count, default=10 ** 7)
    expectation.add_argument("--seed", type=int, default=0)
    expectation.add_argument("--setting", choices=("foundation", "wide"), default="foundation")
    expectation.add_argument("--methods", default="gaussian", help="comma-separated methods")
    cnn = benches.add_parser("cnn", help="π's E[y] on small convolutional nets vs a sampling reference")
    cnn.add_argument("--reference", type=reference_count, default=400_000, help="reference draws per net")
    cnn.add_argument("--quick", action="store_true", help="the 14×14 ReLU max-pool net only")
    cnn.add_argument("--csv", default="out/bench_cnn.csv")
    tails = benches.add_parser("tails", help="tail-probability estimators vs ground truth over a zoo of networks")
    tails.add_argument("--quick", action="store_true", help="three small cases (under a minute)")
    tails.add_argument("--methods", help="comma-separated methods (default: every method but sampling); "
                       "M@N adds N samples to M, M@Nse caps M's whole cost at N sample-equivalents")
    tails.add_argument("--cache", default=".pitrack-cache/bench-tails", help="ground-truth cache folder")
    tails.add_argument("--csv", default="out/bench_tails.csv")
    tails.add_argument("--png", default="out/bench_tails.png")
    tails.add_argument("--seed", type=int, default=0, help="π's seed (its searches, fits and draws)")
    sampling = benches.add_parser("sampling", help="π-guided sampling vs plain sampling at equal FLOPs, repeated")
    sampling.add_argument("--repeats", type=positive_int, default=20)
    sampling.add_argument("--budget", type=positive_int, default=10_000, help="sample-equivalents per estimate")
    sampling.add_argument("--quick", action="store_true", help="the three small cases of bench tails --quick")
    sampling.add_argument("--cases", help="comma-separated zoo case names (default: all)")
    sampling.add_argument("--first-seed", type=int, default=0, help="repeats use seeds first … first + repeats - 1")
    sampling.add_argument("--runs", default="out/bench_sampling_runs.csv", help="one row per run")
    sampling.add_argument("--cache", default=".pitrack-cache/bench-tails", help="ground-truth cache folder")
    sampling.add_argument("--csv", default="out/bench_sampling.csv")
    sampling.add_argument("--png", default="out/bench_sampling.png")
    sampling.add_argument("--openturns", action="store_true",
                          help="also OpenTURNS' FORM, SORM, subset sampling and cross-entropy IS at equal "
                               "model evaluations (needs the extra: pip install -e '.[openturns]')")
    sampling.add_argument("--openturns-repeats", type=positive_int,
                          help="runs of OpenTURNS' stochastic methods per event (default: --repeats)")
    pooled = benches.add_parser("pool", help="the runs CSVs of several bench sampling calls (seed sets) as one")
    pooled.add_argument("runs", nargs="+", help="runs CSVs written by bench sampling --runs")
    compared = benches.add_parser("compare", help="bench tails CSVs (seeds, variants) side by side, event by event")
    compared.add_argument("tables", nargs="+", help="CSVs written by bench tails --csv; the first is the baseline")
    detectors = benches.add_parser("detectors", help="events on learned detectors vs sampling (about 20 s)")
    detectors.add_argument("--quick", action="store_true", help="two nets, two levels, 10⁶ draws (seconds)")
    detectors.add_argument("--budget", type=positive_float, default=10_000,
                           help="sample-equivalents of the sampled estimate")
    detectors.add_argument("--csv", default="out/bench_detectors.csv")
    detectors.add_argument("--png", default="out/bench_detectors.png")
    halfspaces = benches.add_parser("halfspaces", help="halfspace intersections, 3-CNF and permanents vs exact answers")
    halfspaces.add_argument("--quick", action="store_true", help="a few small cases (under 10 s)")
    halfspaces.add_argument("--repeats", type=positive_int, default=10, help="seeds per case (MSE over repeats)")
    halfspaces.add_argument("--budget", type=positive_float, default=3000, help="sample-equivalents per estimate")
    halfspaces.add_argument("--csv", default="out/bench_halfspaces.csv")
    halfspaces.add_argument("--png", default="out/bench_halfspaces.png")
    penalty = benches.add_parser("penalty", help="catastrophe-aware training against sampling (README's table)")
    penalty.add_argument("--seeds", type=positive_int, default=4)
    penalty.add_argument("--steps", type=positive_int, default=400, help="Adam steps of 256 rows")
    penalty.add_argument("--draws", type=positive_int, default=4_000_000, help="samples for P after training")
    penalty.add_argument("--csv", default="out/bench_penalty.csv")
    penalty.add_argument("--png", default="out/bench_penalty.png")
    args = parser.parse_args(argv)
    check_outputs(parser, args)
    from explanations.errors import PiTrackerError      # (after parsing: --help needs no torch)
    from storage import RunFileError
    try:
        _run(parser, args)
    except (PiTrackerError, RunFileError) as error:   # a budget too small, a method the network does not take,
        if args.command != "bench":                   # a run file a live writer holds: the user's input, not a bug
            parser.error(str(error))
        parser.error(f"bench {args.bench}: {error}")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The subcommand `args` names."""
    if args.command == "demo":
        from .demo import run
        if args.untrained:
            run(reference=args.reference, seed=args.seed)
        else:
            from .demo_tracked import track, tracked_events
            check_run_file(parser, Path(args.run_file))
            model = track(steps=args.steps, path=args.run_file, png=str(Path(args.run_file).with_suffix(".png")))
            print("final estimates of the trained model against sampling:")
            run(reference=args.reference, seed=args.seed, model=model, events=tracked_events())
    elif args.command in ("replay", "inspect"):
        from .replay import inspect, replay
        try:
            replay(args.path, args.png) if args.command == "replay" else print(inspect(args.path))
        except (OSError, ValueError) as error:     # RunFileError is a ValueError
            parser.error(str(error))
    elif args.bench == "expectation":
        from explanations.explain import METHODS
        from .bench_expectation import run as bench_run
        methods = tuple(args.methods.split(","))
        known = ("auto", "guide", *sorted(METHODS))
        unknown = [method for method in methods if method not in known]
        if unknown:
            parser.error(f"bench expectation --methods: unknown {', '.join(map(repr, unknown))}; "
                         f"known methods: {', '.join(known)}")
        bench_run(reference=args.reference, seed=args.seed, setting=args.setting, methods=methods)
    elif args.bench == "cnn":
        from .bench_cnn import run as cnn_run
        cnn_run(reference=args.reference, quick=args.quick, csv_path=args.csv)
    elif args.bench == "tails":
        from .bench_tails import parse_method, run as tails_run
        methods = args.methods.split(",") if args.methods else None
        try:
            for method in methods or []:
                parse_method(method)
        except ValueError as error:
            parser.error(f"bench tails --methods: {error}")
        tails_run(quick=args.quick, methods=methods,
                  cache=args.cache, csv_path=args.csv, png_path=args.png, seed=args.seed)
    elif args.bench == "sampling":
        from .bench_sampling import chosen_cases, run as sampling_run
        try:
            chosen_cases(args.quick, args.cases.split(",") if args.cases else None)
        except ValueError as error:
            parser.error(f"bench sampling --cases: {error}")
        if args.openturns and importlib.util.find_spec("openturns") is None:
            parser.error("--openturns needs OpenTURNS: pip install -e '.[openturns]' (or pip install 'openturns>=1.20')")
        sampling_run(repeats=args.repeats, budget=args.budget, quick=args.quick, cache=args.cache,
                     csv_path=args.csv, png_path=args.png, openturns=args.openturns,
                     openturns_repeats=args.openturns_repeats, cases=args.cases.split(",") if args.cases else None,
                     first_seed=args.first_seed, runs_path=args.runs)
    elif args.bench in ("pool", "compare"):
        from .bench_compare import compare
        from .bench_pool import pool
        report, paths = (pool, args.runs) if args.bench == "pool" else (compare, args.tables)
        paths = [Path(p) for p in paths]
        check_text_files(parser, paths, args.bench)
        try:
            print(report(paths))
        except (OSError, ValueError) as error:
            parser.error(f"bench {args.bench}: {error}")
    elif args.bench == "detectors":
        from .bench_detectors import QUANTILES, run as detectors_run
        quick = {"seeds": range(2), "quantiles": QUANTILES[:2], "draws": 10 ** 6} if args.quick else {}
        detectors_run(budget=args.budget, csv_path=Path(args.csv), png_path=Path(args.png), **quick)
    elif args.bench == "penalty":
        from .bench_penalty import run as penalty_run
        penalty_run(seeds=args.seeds, steps=args.steps, draws=args.draws, csv_path=Path(args.csv),
                    png_path=Path(args.png))
    elif args.bench == "halfspaces":
        from .bench_halfspaces import run as halfspaces_run
        halfspaces_run(quick=args.quick, repeats=args.repeats, budget=args.budget, csv_path=args.csv,
                       png_path=args.png)


if __name__ == "__main__":
    main()
