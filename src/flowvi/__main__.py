import sys

from flowvi.cli import main

sys.exit(main())
