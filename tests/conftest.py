import os

# Tests run on the CPU with a deterministic, full-precision setup; a GPU runner must not
# change numerics under the parity tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
