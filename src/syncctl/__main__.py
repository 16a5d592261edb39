import sys

from syncctl.cli.main import main

sys.exit(main())
