"""`python -m chatbox` runs the server."""

import sys

from chatbox.server import main

sys.exit(main())
