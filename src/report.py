"""Compare the runs of a sweep: `python src/report.py logs/train/multiruns/<time>` writes report.png and report.md."""

import argparse
from pathlib import Path

from descent.errors import exit_on_error


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "sweep_dir", type=Path, help="a sweep dir of `src/train.py -m`, a run dir, or any dir above runs"
    )
    parser.add_argument(
        "--target-error",
        type=float,
        default=None,
        help="test error rate (a fraction, 0.02 = 2%%) whose time to reach is tabled; "
        "default: the largest of the runs' lowest test errors, which every run reaches",
    )
    args = parser.parse_args(argv)
    from descent.report import write_report  # here: --help answers without waiting seconds for matplotlib

    print(write_report(args.sweep_dir, args.target_error), end="")


if __name__ == "__main__":
    main()
