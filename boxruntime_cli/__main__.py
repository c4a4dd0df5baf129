import sys

from boxruntime_cli import main

sys.exit(main())
