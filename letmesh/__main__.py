import sys

from letmesh.cli import main

sys.exit(main())
