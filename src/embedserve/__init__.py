"""embedserve: a self-hosted text-embedding inference server."""

__version__ = "0.1.0"

# Before anything imports sentence-transformers (which imports peft, which imports bitsandbytes, which on
# an AVX512-BF16 CPU asks huggingface.co for a kernel at import): import bitsandbytes with the Hub offline.
from embedserve.quiet_imports import import_bitsandbytes_offline  # noqa: E402

import_bitsandbytes_offline()
