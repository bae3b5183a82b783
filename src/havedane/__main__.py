import sys

from havedane.cli import main

sys.exit(main())
