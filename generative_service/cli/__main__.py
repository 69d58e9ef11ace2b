import sys

from generative_service.cli import main

sys.exit(main())
