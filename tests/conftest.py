from __future__ import annotations

import os

from hypothesis import settings

# Wall-clock deadlines make generative tests flaky on loaded CI machines; example counts are
# set per test where a test needs more or fewer.
settings.register_profile("ci", deadline=None, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
