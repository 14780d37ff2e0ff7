"""One Adam step: adam_jax vs optax vs torch, interleaved medians (see adam_jax._benchmarking).

    python benchmarks/step_time.py --size cpu --json step_time.json
"""

import sys

from adam_jax._benchmarking import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
