import sys

from tratree.cli import main

sys.exit(main())
