import sys

from embedding.cli import main

sys.exit(main())
