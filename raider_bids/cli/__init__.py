"""The command line: parser and checks (torch-free), logging, progress, signals and exit codes.

    parser    options, validators and the Config they make
    progress  training progress (a bar on a terminal, log lines otherwise)
    main      main(argv) -> exit code, and run(), the console script's entry point
"""

from .main import main, run

__all__ = ["main", "run"]
