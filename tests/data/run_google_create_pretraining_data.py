"""Runs google-research/bert's create_pretraining_data.py (bert-tensorflow) with its own flags.

    python tests/data/run_google_create_pretraining_data.py --input_file=... --output_file=...
        --vocab_file=... [--dupe_factor=...]

Google's script is TF 1 code; tests/google_reference.py imports it under tf.compat.v1 with
the minimal shims. This wrapper exists for the side-by-side benchmark.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import google_reference


def main(argv):
    module = google_reference.google_create_pretraining_data()
    module.FLAGS(argv)
    for name in ("input_file", "output_file", "vocab_file"):
        if getattr(module.FLAGS, name) is None:
            sys.exit(f"--{name} is required")
    module.main(None)


if __name__ == "__main__":
    main(sys.argv)
