import sys

from tl_cli.cli import main

sys.exit(main())
