"""Backends: token states in, per-task heads out.

Every model load goes through this package, and it is the first to import sentence-transformers
(which imports peft, which imports bitsandbytes, which on an AVX512-BF16 CPU asks huggingface.co
for a kernel at import): bitsandbytes is imported here first, with the Hub offline
(embedserve/quiet_imports.py). Not in the package's own __init__: the CLI would pay ~3 s of torch
import for `--help`.
"""

from embedserve.quiet_imports import import_bitsandbytes_offline

import_bitsandbytes_offline()
