import sys

from vlmrl.plan.cli import main

sys.exit(main())
