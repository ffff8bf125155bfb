import sys

from maskml.cli import main

sys.exit(main())
