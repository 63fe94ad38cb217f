"""Where a run stands, per cell: done, evaluating, training (epoch, step, images/s, ETA), interrupted,
failed (the error and its log), not started; GPU-hours spent against the plan, per table and in total.

    python -m scripts.status                                       # the paper, all_tables
    python -m scripts.status --configfile config/mini.yaml         # the same overlays as snakemake
    python -m scripts.status table2 --out-md status.md --out-csv status.csv

It only reads (results/<scale>/, .snakemake/log/), so it runs beside a live run, on the submit host.
"""

import argparse
import sys
from pathlib import Path

from dra.config import ConfigError
from dra.status import (
    STALE_SECONDS,
    TARGETS,
    StatusError,
    campaign_status,
    load_workflow_config,
    render_csv,
    render_markdown,
    render_terminal,
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?", default="all_tables",
                        help=f"a Snakemake target ({', '.join(TARGETS)}) or a table of config tables")
    parser.add_argument("--configfile", nargs="+", action="extend", default=[],
                        help="overlays on config.yaml, as given to snakemake")
    parser.add_argument("--directory", default=".", help="the workflow's folder (config.yaml, results/, .snakemake/)")
    parser.add_argument("--stale-minutes", type=float, default=STALE_SECONDS / 60,
                        help="a training not heard from for this long is shown as interrupted")
    parser.add_argument("--out-md", help="also write the status as Markdown here")
    parser.add_argument("--out-csv", help="also write one row per cell as CSV here")
    args = parser.parse_args(argv)
    try:
        config = load_workflow_config(args.configfile, args.directory)
        status = campaign_status(config, args.directory, args.target, stale_seconds=args.stale_minutes * 60)
    except (ConfigError, StatusError) as error:
        sys.exit(f"status: {error}")
    print(render_terminal(status), end="")
    # written where asked, never under results/ unless asked: the status itself writes nothing there
    for path, text in ((args.out_md, render_markdown), (args.out_csv, render_csv)):
        if path:
            Path(path).write_text(text(status))


if __name__ == "__main__":
    main()
