"""Write the protocol's JSON Schemas (docs/schemas/*.json) from the code's models.

    python tools/schemas.py          # write them
    python tools/schemas.py --check  # exit 1 if a file is not current

The schemas come from `tokenwire.protocol.schemas`; tests/unit/test_schemas.py fails
when the files differ from what it gives.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenwire.protocol.schemas import DIRECTORY, rendered  # noqa: E402


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="only check that they are current")
    check = args.parse_args().check
    directory = ROOT / DIRECTORY
    stale = []
    for name, text in rendered().items():
        path = directory / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if check else 'wrote'}: {path}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
