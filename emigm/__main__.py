import sys

from emigm.cli.main import main

sys.exit(main())
