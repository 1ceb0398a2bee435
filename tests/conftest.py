"""Test-session setup shared by all tests.

Eight simulated CPU devices for the whole session, so multi-device code (meshes, sharded
batches, data-parallel steps) is tested on a laptop. The flag must be set before JAX is
imported anywhere, hence here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
