import sys

from sicube.cli import main

sys.exit(main())
