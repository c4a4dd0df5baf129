import sys

from boxruntime.edges.cli import main

sys.exit(main())
