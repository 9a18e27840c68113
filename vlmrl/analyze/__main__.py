import sys

from vlmrl.analyze.cli import main

sys.exit(main())
