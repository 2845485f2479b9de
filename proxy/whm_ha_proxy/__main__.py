"""``python -m whm_ha_proxy``: the proxy on its own, with the same flags as ``whm-ha proxy``."""

from __future__ import annotations

import argparse
import sys

from .options import ProxyOptions, add_arguments
from .supervisor import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="whm-ha proxy", description="Route HTTP traffic to the healthy nodes of one WHMCluster."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = ProxyOptions.from_args(args)
    except ValueError as exc:
        print(f"whm-ha proxy: {exc}", file=sys.stderr)
        return 2
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
