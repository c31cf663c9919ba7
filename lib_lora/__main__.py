"""`python -m lib_lora`: the standalone app and command line (see lib_lora/cli/main.py)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
