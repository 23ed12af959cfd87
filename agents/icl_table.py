"""Print an in-context results table as markdown: mean [95% bootstrap CI over seeds] per agent.

    python -m agents.icl_table results/darkroom/icl_10x10.csv [--trials 1 5 10 20 40]

Why: the README tables of `results/darkroom/` are made by this from the committed CSV, so
they cannot drift from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.icl import summary_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="a table with columns agent,seed,trial,mean_reward")
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 5, 10, 20, 40])
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        parser.error(f"{args.csv}: no such results table")
    print(summary_table(args.csv, args.trials))


if __name__ == "__main__":
    main()
