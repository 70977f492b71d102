import sys

from mimkd.cli import main

sys.exit(main())
