"""Gateway load and soak: 20,000 plain requests and 500 concurrent streams in one run, each answer
checked (nothing lost, truncated or interleaved), the gateway's memory before and after.

    $ python bench/bench_gateway_soak.py [--requests 20000] [--streams 500]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gateway_soak import main  # noqa: E402

if __name__ == "__main__":
    main()
