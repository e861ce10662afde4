import sys
from pathlib import Path

# tests/faults.py (fault-injecting backends) importable as `faults` from any test folder.
sys.path.insert(0, str(Path(__file__).parent))
