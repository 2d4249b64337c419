"""The ``groupq`` console script: the Rust command line, in this process."""

import sys

from . import _native


def main() -> int:
    return _native.cli_main(["groupq", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
