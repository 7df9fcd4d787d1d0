"""Run a notebook headless, top to bottom, and keep its PNG figures.

    python notebooks/run_notebook.py what_pruning_keeps.ipynb --figures docs/figures [--small]

The notebook's settings cell reads MVP_NB_* environment variables; this sets MVP_NB_FIGURES
(and MVP_NB_SMALL with --small) and, with --executed, saves the notebook with its outputs.
Exit status 1 and the failing cell's error when a cell raises.
"""

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook", help="a notebook in notebooks/ (name or path)")
    ap.add_argument("--figures", required=True, help="folder for the PNG files")
    ap.add_argument("--small", action="store_true", help="the quick settings (MVP_NB_SMALL=1)")
    ap.add_argument("--executed", help="also save the executed notebook (with outputs) here")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = ap.parse_args(argv)

    path = Path(args.notebook)
    path = path if path.exists() else HERE / path.name
    if not path.exists():
        print(f"error: no notebook {args.notebook!r} (have: "
              f"{', '.join(sorted(p.name for p in HERE.glob('*.ipynb')))})", file=sys.stderr)
        return 2

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    os.environ["MVP_NB_FIGURES"] = str(Path(args.figures).resolve())
    if args.small:
        os.environ["MVP_NB_SMALL"] = "1"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=args.timeout,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as err:
        print(f"error: a cell of {path.name} raised:\n{err}", file=sys.stderr)
        return 1
    finally:
        if args.executed:
            nbformat.write(nb, args.executed)
    print(f"{path.name}: figures in {os.environ['MVP_NB_FIGURES']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
