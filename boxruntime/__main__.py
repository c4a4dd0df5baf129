import sys

from boxruntime.cli import main

sys.exit(main())
