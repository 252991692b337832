"""The multi-host tests import their world (cluster.py) from here, traffic helpers from tests/network."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "network"))
